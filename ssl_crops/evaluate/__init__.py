"""Evaluation of frozen backbones: checkpoint loading (:mod:`.checkpoints`), feature extraction
and cache (:mod:`.features`), the linear probe sweep (:mod:`.probe`), weighted kNN
(:mod:`.knn`), reports (:mod:`.report`) and the ``linear_eval.py`` protocols (:mod:`.protocol`)."""
from .checkpoints import (ARCH_CANDIDATES, CheckpointError, backbone_from_checkpoint, backbone_state_dict,
                          build_backbone, checkpoint_fingerprint, find_linear_resume, infer_arch, load_backbone,
                          read_checkpoint)
from .features import (AMP_DTYPES, FeatureCache, IndexedDataset, MultiView, autocast, default_cache_dir,
                       extract_features, feature_loader, index_digest, is_multilabel)
from .knn import KNNMonitor, knn_classify, knn_scores
from .probe import Standardizer, linear_probe, predict, score_predictions, train_linear_heads
from .protocol import build_parser, load_splits, main, run_cached, run_moco
from .report import build_report, format_table, write_report

__all__ = ["ARCH_CANDIDATES", "AMP_DTYPES", "CheckpointError", "FeatureCache", "IndexedDataset", "KNNMonitor",
           "MultiView", "Standardizer", "autocast", "backbone_from_checkpoint", "backbone_state_dict",
           "build_backbone", "build_parser", "build_report", "checkpoint_fingerprint", "default_cache_dir",
           "extract_features", "feature_loader", "find_linear_resume", "format_table", "index_digest",
           "infer_arch", "is_multilabel", "knn_classify", "knn_scores", "linear_probe", "load_backbone",
           "load_splits", "main", "predict", "read_checkpoint", "run_cached", "run_moco", "score_predictions",
           "train_linear_heads", "write_report"]
