"""The paper's table: parameters, MACs and ImageNet-1K top-1 of the published models.

From MetaFormer Baselines for Vision (Yu et al., TPAMI 2024), Tables 1/2 (224x224) and the
384x384 fine-tunes' MACs. Figures are kept as printed, as strings, because the printed
precision is part of the fact: the zoo tests compare a count at the table's own rounding
(``11.9`` M is one decimal, ``27`` M whole millions). ``mfdsl compare --paper`` and the
tests read this one table.
"""
from __future__ import annotations

from typing import Dict, NamedTuple, Optional

SOURCE = "MetaFormer Baselines for Vision, Yu et al. (TPAMI 2024)"


class PaperRow(NamedTuple):
    params: str  # trainable parameters, millions, as printed
    frozen: Optional[str]  # frozen parameters, millions, as printed (None: none listed)
    macs: str  # multiply-accumulates, billions, as printed
    top1: Optional[str]  # ImageNet-1K top-1 %, as printed (None: not in the table)
    img_size: int = 224


PAPER_TABLE: Dict[str, PaperRow] = {
    "identityformer_s12": PaperRow("11.9", None, "1.8", "74.6"),
    "identityformer_s24": PaperRow("21.3", None, "3.4", "78.2"),
    "identityformer_s36": PaperRow("30.8", None, "5.0", "79.3"),
    "identityformer_m36": PaperRow("56.1", None, "8.8", "80.0"),
    "identityformer_m48": PaperRow("73.3", None, "11.5", "80.4"),
    "randformer_s12": PaperRow("11.9", "0.2", "1.9", "76.6"),
    "randformer_s24": PaperRow("21.3", "0.5", "3.5", "78.2"),
    "randformer_s36": PaperRow("30.8", "0.7", "5.2", "79.5"),
    "randformer_m36": PaperRow("56.1", "0.7", "9.0", "81.2"),
    "randformer_m48": PaperRow("73.3", "0.9", "11.9", "81.4"),
    "poolformerv2_s12": PaperRow("11.9", None, "1.8", "78.0"),
    "poolformerv2_s24": PaperRow("21.3", None, "3.4", "80.7"),
    "poolformerv2_s36": PaperRow("30.8", None, "5.0", "81.6"),
    "poolformerv2_m36": PaperRow("56.1", None, "8.8", "82.2"),
    "poolformerv2_m48": PaperRow("73.3", None, "11.5", "82.6"),
    "convformer_s18": PaperRow("27", None, "3.9", "83.0"),
    "convformer_s36": PaperRow("40", None, "7.6", "84.1"),
    "convformer_m36": PaperRow("57", None, "12.8", "84.5"),
    "convformer_b36": PaperRow("100", None, "22.6", "84.8"),
    "caformer_s18": PaperRow("26", None, "4.1", "83.6"),
    "caformer_s36": PaperRow("39", None, "8.0", "84.5"),
    "caformer_m36": PaperRow("56", None, "13.2", "85.2"),
    "caformer_b36": PaperRow("99", None, "23.2", "85.5"),
    # 384x384 fine-tunes: the parameters of their 224 models; the paper gives their MACs.
    "convformer_s18_384": PaperRow("27", None, "11.6", None, 384),
    "convformer_s36_384": PaperRow("40", None, "22.4", None, 384),
    "convformer_m36_384": PaperRow("57", None, "37.7", None, 384),
    "convformer_b36_384": PaperRow("100", None, "66.5", None, 384),
    "caformer_s18_384": PaperRow("26", None, "13.4", None, 384),
    "caformer_s36_384": PaperRow("39", None, "26.0", None, 384),
    "caformer_m36_384": PaperRow("56", None, "42.0", None, 384),
    "caformer_b36_384": PaperRow("99", None, "72.2", None, 384),
}
