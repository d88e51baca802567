"""imagebench: compare image-classification models honestly and fast.

Importing the package is cheap: TensorFlow and torch load only inside their backends.
"""

import warnings

__version__ = "0.1.0"

# tqdm.auto (used by MLflow and the Hugging Face hub) warns in every notebook kernel without
# ipywidgets; the bars work as text anyway, so the notice is noise in each trial's outputs
warnings.filterwarnings("ignore", message="IProgress not found")
