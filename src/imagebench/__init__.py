"""imagebench: compare image-classification models honestly and fast.

Importing the package is cheap: TensorFlow and torch load only inside their backends.
"""

__version__ = "0.1.0"
