"""The MOSS-VLA policy: SigLIP + temporal module, VL backbone (ContextVLA), GR00T flow-matching head.

Public API: :class:`MossVLAPolicy`, :class:`MossVLAConfig`, :func:`make_policy`.
"""

from moss_vla.policy.configuration import MossVLAConfig
from moss_vla.policy.modeling import MossVLAPolicy, make_policy

__all__ = ["MossVLAConfig", "MossVLAPolicy", "make_policy"]
