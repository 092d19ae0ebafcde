"""The README's example runs as written (one epoch instead of five, to stay quick)."""
import os
import re

import pytest

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


@pytest.mark.skipif(not os.path.exists(README), reason="README.md not beside the tests")
def test_readme_example_runs():
    code = re.search(r"```python\n(.*?)```", open(README).read(), re.S).group(1)
    assert "from fastnet import layers, models" in code
    namespace = {}
    exec(compile(code.replace("epochs=5", "epochs=1"), "README.md", "exec"), namespace)
    assert namespace["probabilities"].shape == (5, 10)
    assert namespace["test_acc"] > 0.6
