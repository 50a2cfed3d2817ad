"""Model statistics: FLOP counting (FlopCounterMode knows the convops ops once convops is
imported), per-layer summaries and receptive fields."""
from . import flops  # noqa: F401  (registers the FLOP formulas with torch.utils.flop_counter)
from .summary import Field, LayerInfo, Summary, receptive_field, summary

__all__ = ["flops", "Field", "LayerInfo", "Summary", "receptive_field", "summary"]
