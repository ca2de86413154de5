"""The library imports only what it needs: the lab's packages (Dask, matplotlib, YAML, ...) are
loaded by the lab, never by ``import lazylab`` or by training / NTK / regimes."""

from __future__ import annotations

import subprocess
import sys

LAB_ONLY = ("dask", "distributed", "matplotlib", "yaml", "sklearn", "pandas")

CODE = """
import sys
import torch
import lazylab
from lazylab import training
torch.manual_seed(0)
net = lazylab.TwoLayerNet(3, 8)
X, y = torch.randn(10, 3), torch.randn(10)
lz = lazylab.lazy(net, 10.0)
h = lazylab.train(lz, (X, y), steps=3, lr=0.1, progress=False)
K = lazylab.ntk(net, X[:4])
lin = lazylab.linearize(net)
lin(X[:2])
assert K.shape[0] == 4 and h.steps == 3
print(",".join(sorted(m for m in {LAB!r} if m in sys.modules)))
"""


def _loaded(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code.replace("{LAB!r}", repr(LAB_ONLY))],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_library_use_loads_no_lab_package():
    assert _loaded(CODE) == ""


def test_the_check_sees_a_lab_package_when_one_is_loaded():  # negative control of the check above
    lab = "from lazylab.lab import diagnose_cli\ndiagnose_cli._parse_sets(['m=3'], '--model-set')\n"
    assert _loaded(CODE.replace("import lazylab\n", "import lazylab\n" + lab)) == "yaml"
