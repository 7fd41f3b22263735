"""ssl-crops: object-aware crops for self-supervised pretraining.

Submodules are imported on demand so that light users (box readers, BING proposals)
do not pay for importing torch.
"""

__version__ = "0.1.0"
