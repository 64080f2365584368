"""The load benchmark runs and the loader's peak memory stays near the parameter bytes (0.5B preset shape)."""

from tooln1_jax.bench import load


def test_load_benchmark_peak_rss_under_1_5x_param_bytes(capsys):
    result = load.main(["--preset", "0.5b"])
    assert '"benchmark": "load"' in capsys.readouterr().out
    assert result["num_params"] == 494_032_768
    assert result["param_bytes"] == 4 * 494_032_768  # float32 master weights
    assert result["peak_rss_bytes"] < 1.5 * result["param_bytes"], result
