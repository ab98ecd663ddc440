"""A particle run's size known before any work: what it holds, the refusal of one that cannot fit, and the
denoiser never seeing more particles at once than the batch size (memory flat in the number of particles)."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from textsr.cli import main
from textsr.errors import UsageError
from textsr.solvers.budget import DEFAULT_ROWS, STATE_TENSORS, check_particle_memory, particle_request


def test_a_request_holds_one_batch_of_particles():
    req = particle_request(16, 64, [(3, 16, 16), (3, 64, 64)], [100, 100], batch_size=4)
    assert req.held == 4 * 64 and req.max_rows == 4  # a given batch size bounds the rows per call
    assert req.state_bytes == 4 * 64 * 3 * 64 * 64 * 8 * STATE_TENSORS  # the largest stage
    assert req.denoiser_evaluations == 16 * 64 * 200
    assert particle_request(16, 64, [(1, 4, 4)], [10]).max_rows == DEFAULT_ROWS  # none given
    assert particle_request(2, 8, [(1, 4, 4)], [10]).max_rows == 16  # all the particles there are


def test_a_run_that_cannot_fit_is_refused_with_what_to_lower():
    req = particle_request(256, 4096, [(3, 64, 64)], [100])
    with pytest.raises(UsageError) as e:
        check_particle_memory(req, "cpu", available=16 * 2**30)
    msg = str(e.value)
    # 0.94 MB of state per 64x64 particle: 8 GiB hold 8,738 particles
    assert "1,048,576 particles" in msg and "--particles to at most 34," in msg and "to at most 2" in msg
    with pytest.raises(UsageError, match=r"--particles to at most 34, or --batch-size .* to at most 8$"):
        check_particle_memory(particle_request(16, 64, [(3, 64, 64)], [100], batch_size=16), "cpu", available=2**30)
    check_particle_memory(particle_request(16, 64, [(3, 64, 64)], [100], batch_size=8), "cpu", available=2**30)
    with pytest.raises(UsageError, match=r"set --batch-size 1 and lower --particles to at most 1$"):
        check_particle_memory(particle_request(2, 4096, [(3, 64, 64)], [100], batch_size=2), "cpu",
                              available=3 * 3 * 64 * 64 * 8 * STATE_TENSORS)
    with pytest.raises(UsageError, match="not even one particle"):
        check_particle_memory(particle_request(1, 1, [(3, 64, 64)], [100]), "cpu", available=2**20)


def test_absurd_particle_requests_end_in_a_message_before_any_work(tmp_path, monkeypatch):
    from textsr.demo import demo_image

    def no_work(*a, **k):
        raise AssertionError("sampling started")

    monkeypatch.setattr("textsr.cascade.sample", no_work)
    img = tmp_path / "lr.png"
    Image.fromarray((demo_image() * 255).round().astype(np.uint8)).save(img)
    res = CliRunner().invoke(main, ["upscale", str(img), "--scale", "8", "--particles", "4096", "-n", "256",
                                    "-o", str(tmp_path / "out"), "-q"])
    assert res.exit_code == 2 and "--particles to at most" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "out" / "results.json").exists()
    monkeypatch.setattr("textsr.solvers.budget.available_memory", lambda device: 2**30)
    res = CliRunner().invoke(main, ["rank", str(img), "--scale", "8", "-p", "a", "-p", "b", "--method", "particles",
                                    "--particles", "4096", "-n", "256"])
    assert res.exit_code == 2 and "--particles to at most" in res.output


def test_the_denoiser_sees_at_most_the_batch_size_of_particles(monkeypatch):
    from textsr import explore, rank
    from textsr.demo import demo_image
    from textsr.gaussian_mixture import MixtureDenoiser

    rows, real = [], MixtureDenoiser.__call__
    monkeypatch.setattr(MixtureDenoiser, "__call__", lambda self, x, t, cond=None: (rows.append(x.shape[0]),
                                                                                   real(self, x, t, cond))[1])
    explore(demo_image(), ["a red circle"], scale=8, particles=6, samples=3, batch_size=2, steps=2)
    assert max(rows) == 2
    rows.clear()
    rank(demo_image(), ["a red circle", ""], scale=8, particles=5, samples=3, steps=2, batch_size=3)
    assert max(rows) == 3
    rows.clear()
    explore(demo_image(), ["a red circle"], scale=8, particles=40, samples=2, steps=2)  # no batch size: 64 at most
    assert max(rows) == DEFAULT_ROWS


def test_a_front_end_learns_a_requests_work_before_any_sampling(monkeypatch):
    """``textsr.api.request_budget``: what the web app caps (issue 21, defect 1), for the run explore would do."""
    from textsr.api import request_budget
    from textsr.demo import demo_image
    from textsr.request import ExploreRequest

    def no_work(*a, **k):
        raise AssertionError("sampling started")

    monkeypatch.setattr("textsr.cascade.sample", no_work)
    size = request_budget(ExploreRequest(image=demo_image(), prompts=("a red circle", "a red star"), scale=8,
                                         samples=16, particles=64, steps=5))
    assert (size.samples, size.particles, size.held, size.max_rows, size.prompts) == (16, 64, 16 * 64, DEFAULT_ROWS, 2)
    assert size.steps == (5, 5) and size.shapes == ((3, 16, 16), (3, 64, 64))  # the built-in world's two stages
    assert size.denoiser_evaluations == 16 * 64 * 10 and size.total_evaluations == 2 * 16 * 64 * 10
    plain = request_budget(ExploreRequest(image=demo_image(), prompts=("a red circle",), scale=8, samples=3,
                                          batch_size=2))
    assert (plain.particles, plain.held, plain.max_rows) == (1, 2, 2)


def test_batches_and_chunks_of_particles_change_no_number():
    """Same seeds, same samples and evidence whether the particles go through the denoiser all at once or in
    chunks of the batch size (memory flat in the number of particles)."""
    from textsr import explore
    from textsr.demo import demo_image

    runs = [explore(demo_image(), ["a red circle"], scale=8, particles=6, samples=2, steps=3, batch_size=b)
            for b in (None, 1)]  # None: 12 particles per call; 1: one sample's 6 particles per batch, 1 per call
    a, b = (r.prompts[0] for r in runs)
    np.testing.assert_allclose(b.samples, a.samples, atol=1e-6)
    assert b.evidence.log_z_samples == pytest.approx(a.evidence.log_z_samples, abs=1e-6)
