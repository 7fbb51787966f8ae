# SPDX-License-Identifier: Apache-2.0
"""lmms-eval's model registry entry for srum: ``lmms-eval --model srum --model_args
pretrained=/ckpt ...`` once srum is installed (``pyproject.toml`` declares this function
under the ``lmms_eval.models`` entry-point group, which lmms-eval >= 0.6 reads when its
``lmms_eval.models`` package is imported). The adapter module itself is imported only
when the model is asked for, so listing models stays cheap."""
from __future__ import annotations

MODEL_ID = "srum"
CLASS_PATH = "srum.understanding.lmms_adapter.SrumBagelLMM"


def lmms_eval_manifest():
    """The entry point's payload: a ``ModelManifest`` naming the adapter class."""
    from lmms_eval.models.registry_v2 import ModelManifest
    return ModelManifest(model_id=MODEL_ID, simple_class_path=CLASS_PATH, aliases=("srum_bagel",))


def register_in_process() -> None:
    """Register the adapter in this process's lmms-eval registry (an editable checkout
    that was not reinstalled after the entry point was added has none)."""
    from lmms_eval.models import MODEL_REGISTRY_V2
    MODEL_REGISTRY_V2.register_manifest(lmms_eval_manifest(), overwrite=True)
