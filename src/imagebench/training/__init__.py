"""The framework-neutral pieces of training that both backends share: the epoch monitor and
early stopping (``monitor``), evaluation on the test split (``evaluation``), augmentation
(``augment``), weights files (``weights``), thread budgets (``resources``) and the frozen-backbone
feature cache (``features``).

Imported by ``imagebench.backends`` and ``imagebench.trial``; imports only ``core``, ``models``,
``data`` and ``store`` paths.
"""
