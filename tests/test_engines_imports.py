"""The torch-free parts of ``engines`` import without torch: the weight-free pipeline uses them."""

import subprocess
import sys

import engines


def test_cache_and_executor_import_without_loading_torch():
    code = ("import sys, engines.cache, engines.executor, stream.sinks, stream.swap; "
            "print(sorted(m for m in ('torch', 'onnx', 'onnxruntime') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_entry_points_load_on_first_use():
    assert set(engines.__all__) <= set(dir(engines))
    for name in engines.__all__:
        assert callable(getattr(engines, name)), name
    try:
        engines.no_such_entry_point  # noqa: B018
    except AttributeError as exc:
        assert "no_such_entry_point" in str(exc)
    else:
        raise AssertionError("an unknown name must raise AttributeError")
