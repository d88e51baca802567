"""The shared vocabulary every layer speaks: a trial's parameters (``params``), the names that
become paths (``names``), the metrics table (``metrics``), the planned trial (``planned``), the
sweep-kernel contract (``contract``) and the figures (``plots``).

Nothing here imports from another imagebench package except ``imagebench.models`` (the registry
of architectures); everything else may import from here.
"""
