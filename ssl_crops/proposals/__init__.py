"""Objectness proposals (BING) for images without boxes; no torch import here.

``Bing`` (fit, propose, save/load, ``from_opencv``; modules: images, features, solvers,
ranking, rescoring, opencv, evaluation), ``ProposalCache`` (proposals cached by
``python -m ssl_crops.proposals propose``) and ``open_proposals`` (either, from a file). Both
serve ``proposals_for(image_id, image)`` -> normalized xyxy, best first, to the dataset.
"""
from .bing import (Bing, ImageReadError, ModelFileError, as_rgb, box_iou, evaluate_proposals, format_table,
                   normed_gradient, read_image)
from .cache import ProposalCache, list_images, open_proposals, propose_folder

__all__ = ["Bing", "ProposalCache", "open_proposals", "propose_folder", "list_images", "ImageReadError",
           "ModelFileError", "read_image", "as_rgb", "normed_gradient", "box_iou", "evaluate_proposals",
           "format_table"]
