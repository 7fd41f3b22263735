"""Objectness proposals (BING) for images without boxes; no torch import here.

``Bing`` (fit, propose, save/load, ``from_opencv``; its knobs in ``ScoringConfig``,
``RankingConfig``, ``FitConfig``; stages by module: images, gradients (I, II), rescoring (III),
ranking, snapping; also edges, solvers, opencv, evaluation), ``ProposalCache`` (proposals
cached by ``python -m ssl_crops.proposals propose``) and ``open_proposals`` (either, from a
file). Both serve ``proposals_for(image_id, image, top_k)`` -> normalized xyxy, best first, to
the dataset.
"""
from .bing import (Bing, FitConfig, ImageReadError, ModelFileError, RankingConfig, ScoringConfig, as_rgb, box_iou,
                   evaluate_proposals, format_table, normed_gradient, read_image)
from .cache import ProposalCache, list_images, open_proposals, propose_folder

__all__ = ["Bing", "ScoringConfig", "RankingConfig", "FitConfig", "ProposalCache", "open_proposals", "propose_folder",
           "list_images", "ImageReadError", "ModelFileError", "read_image", "as_rgb", "normed_gradient", "box_iou",
           "evaluate_proposals", "format_table"]
