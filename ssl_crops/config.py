"""A command line's resolved settings as one immutable object, and the choices shared by the
training and evaluation command lines.

``train`` and ``evaluate.protocol`` parse their flags, resolve what depends on the machine or on a
checkpoint, and hand the lower modules a :class:`Config`: nothing below the entry point changes a
setting; a resolved value is a new config (:meth:`Config.replace`)."""
import argparse
import types

import torch

__all__ = ["AMP_DTYPES", "Config"]

AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # --amp choices


class Config(types.SimpleNamespace):
    """Settings read as attributes (``cfg.batch_size``), like an ``argparse.Namespace`` but frozen:
    assigning raises ``AttributeError``; :meth:`replace` returns a changed copy."""

    def __setattr__(self, name, value):
        raise AttributeError(f"a Config is frozen: use cfg.replace({name}=...)")

    def __delattr__(self, name):
        raise AttributeError("a Config is frozen")

    @classmethod
    def of(cls, namespace: argparse.Namespace | dict, **settings) -> "Config":
        """A config with the values of a parsed namespace (or dict) and ``settings`` (new or
        resolved ones, e.g. a default that depends on the device)."""
        cfg = cls()
        cfg.__dict__.update(namespace if isinstance(namespace, dict) else vars(namespace), **settings)
        return cfg

    def replace(self, **changes) -> "Config":
        """A copy with ``changes`` (existing settings only: a misspelt name is an error)."""
        unknown = set(changes) - set(self.__dict__)
        if unknown:
            raise TypeError(f"Config.replace: unknown settings {sorted(unknown)}")
        return type(self).of(self.__dict__, **changes)

    def to_dict(self) -> dict:
        return dict(self.__dict__)
