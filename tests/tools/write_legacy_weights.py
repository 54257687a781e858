"""Writes tests/data/weights_v0.1.0/ with the code of v0.1.0 before the restructure (commit 5c21bc8).

Not run by the suite: the files it wrote are committed, and tests/core/test_legacy_weights.py loads them with
today's code. To write them again: check out 5c21bc8 as .../kontext_sliders, then from that checkout
``PYTHONPATH=<its parent> python tests/tools/write_legacy_weights.py OUT``. (The GSTLoRA authors' layout is
a plain diffusers LoRA, covered by the GSTLoRA file; it is left out to keep the folder small.)
"""
import sys
from pathlib import Path
out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
sys.path.insert(0, "tests")
import ks_fixtures as F
from kontext_sliders.core.formats import save_single_file, save_official_folder
from kontext_sliders.core.slideredit import save_slideredit, save_authors_layout
from kontext_sliders.core.numeric import save_numeric_weights
w = F.tiny_projector_weights(seed=0, clip_dim=16)
save_single_file(w, out / "kontinuous_tiny.safetensors")
save_official_folder(w, out / "kontinuous_release")
for variant in ("stlora", "gstlora"):
    s = F.slideredit_weights(variant)
    save_slideredit(s, out / f"slideredit_{variant}.safetensors")
    save_authors_layout(s, out / f"slideredit_{variant}_authors")
save_numeric_weights(F.numeric_weights(seed=0), out / "numeric_tiny.safetensors")
