"""`python -m convops.bench`: convops vs torch/torchvision, same tensors, same process."""
from .runner import main, run_suites  # noqa: F401
