"""flexavatar.export: a FlexAvatar checkpoint → a checked avatar bundle (``flexavatar-export``).

    from flexavatar.export import export_bundle
    result = export_bundle("ckpt-900k.pt", "bundle/", template="gghead_template.obj",
                           dinov2="dinov2_vitb14_reg4_pretrain.pth", avatar="me.png")

The bundle's format (manifest.json, model metadata) and its loader live in ``flexavatar.bundle``.
"""
from .errors import (ExportArgumentError, ExportError, ExportStepError, OutputDirError, OutputExistsError,
                     ParityError)
from .exporter import ExportResult, export_bundle, summary_table

__all__ = ["export_bundle", "ExportResult", "summary_table", "ExportError", "ExportArgumentError",
           "OutputDirError", "OutputExistsError", "ExportStepError", "ParityError"]
