"""The registry of architectures (``registry``): every model name, its family and recipe, and the
frameworks. Every other list of models or frameworks (parameters, CLI choices, notebooks, parity
tests) derives from it. The bottom of the tree: imports nothing of imagebench.
"""
