"""Old name of :mod:`ssl_crops.proposals.gradients` (stages I/II: normed gradients, window maxima).

Kept so ``from ssl_crops.proposals.features import normed_gradient`` keeps working; it warns once
per import and will go in a later release.
"""
import warnings

from .gradients import (COLORS, SIDES, Candidates, Layout, convert_color, gradient, gradients, grid_maxima,
                        local_maxima, normed_gradient)

__all__ = ["COLORS", "SIDES", "Candidates", "Layout", "convert_color", "gradient", "gradients", "grid_maxima",
           "local_maxima", "normed_gradient"]

warnings.warn("ssl_crops.proposals.features is now ssl_crops.proposals.gradients; import from there",
              DeprecationWarning, stacklevel=2)
