"""Evidence under a finding reads as whole "Label: value" lines, not raw keys cut off (issue 17, item 7)."""
import math

import numpy as np

from ui.diagnosis import evidence_markdown


def test_evidence_is_readable_label_value_lines():
    ev = {"recovered": False, "n_channels": 12, "dead_fraction": 0.123456, "onset": np.float32(math.nan),
          "layers": ["block1_conv", "block2_conv"], "saturated": np.bool_(True)}
    assert evidence_markdown(ev).splitlines() == [
        "- Recovered: no",
        "- Number of channels: 12",
        "- Dead fraction: 0.123",
        "- Layers: block1_conv, block2_conv",
        "- Saturated: yes",
    ]


def test_evidence_of_nothing_is_empty():
    assert evidence_markdown({}) == ""
