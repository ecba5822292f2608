"""The engine's CPU thread count: 1 for small models, the CPUs (shared by the ranks) for big
ones, and the user's choice (OMP_NUM_THREADS, MKL_NUM_THREADS, torch.set_num_threads) kept."""
from __future__ import annotations

import pytest
import torch

from solidx.runtime import cpu_threads


@pytest.fixture
def threads(monkeypatch):
    """Restore torch's thread count; no thread variables set; this count taken as torch's own."""
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    monkeypatch.setattr(cpu_threads, "_found_at_import", before)
    monkeypatch.setattr(cpu_threads, "_last_set", None)
    yield before
    torch.set_num_threads(before)


def test_small_models_get_one_thread_big_ones_the_cpus(monkeypatch) -> None:
    monkeypatch.setattr(cpu_threads, "available_cpus", lambda: 8)
    assert cpu_threads.choose_threads(64, 128) == 1  # tiny-llama
    assert cpu_threads.choose_threads(2048, 8192) == 1  # still slower on 2 threads (measured)
    assert cpu_threads.choose_threads(4096, 14336) == 8  # Llama-3-8B
    assert cpu_threads.choose_threads(4096, 14336, ranks_on_host=2) == 4
    assert cpu_threads.choose_threads(4096, 14336, ranks_on_host=16) == 1


def test_the_rule_applies_when_the_user_chose_nothing(threads, monkeypatch) -> None:
    monkeypatch.setattr(cpu_threads, "available_cpus", lambda: 2)
    torch.set_num_threads(2)
    monkeypatch.setattr(cpu_threads, "_found_at_import", 2)
    assert cpu_threads.apply_cpu_threads(64, 128) == 1 and torch.get_num_threads() == 1
    assert cpu_threads.apply_cpu_threads(4096, 14336) == 2  # its own earlier choice is no user's
    assert torch.get_num_threads() == 2


@pytest.mark.parametrize("variable", ["OMP_NUM_THREADS", "MKL_NUM_THREADS"])
def test_a_thread_variable_is_honoured(threads, monkeypatch, variable) -> None:
    monkeypatch.setenv(variable, "2")
    torch.set_num_threads(2)
    monkeypatch.setattr(cpu_threads, "_found_at_import", 2)
    assert cpu_threads.apply_cpu_threads(64, 128) == 2 and torch.get_num_threads() == 2


def test_torch_set_num_threads_is_honoured(threads, monkeypatch) -> None:
    monkeypatch.setattr(cpu_threads, "_found_at_import", 3)  # torch's count at solidx's import
    torch.set_num_threads(2)  # the user's call afterwards
    assert cpu_threads.user_chose_threads()
    assert cpu_threads.apply_cpu_threads(64, 128) == 2
