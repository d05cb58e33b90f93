"""CUDA against the CPU (run by the device check on a lent GPU machine; skipped without CUDA)."""

from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_knn_on_cuda_returns_the_cpus_neighbours_with_ties():
    from robustbench_dml.gallery import Gallery

    g = torch.Generator().manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(5000, 32, generator=g), dim=1)
    emb[100:120] = emb[7]  # exact duplicates: ties broken by index on every device
    labels = torch.randint(10, (5000,), generator=g)
    q = emb[:64]
    cpu = Gallery(emb, labels, backend="torch").knn(q, 25, exclude=torch.arange(64))
    gpu = Gallery(emb.cuda(), labels.cuda(), backend="torch").knn(q.cuda(), 25, exclude=torch.arange(64).cuda())
    assert torch.equal(gpu[1].cpu(), cpu[1])


@pytest.mark.parametrize("aid", ["CA+", "CA-", "QA+", "QA-", "TMA", "ES", "LTM", "GTM", "GTT"])
def test_each_attack_on_cuda_under_the_exact_policy_matches_the_cpu(aid):
    import attacks
    from robustbench_dml.gallery import Gallery, embed_tensor
    from robustbench_dml.numerics import EXACT, applied

    g = torch.Generator().manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 8))
    images, labels = torch.rand(2000, 8, generator=g), torch.randint(10, (2000,), generator=g)
    out = {}
    for device in ("cpu", "cuda"):
        m = model.to(device)
        with applied(EXACT, torch.device(device)):
            gallery = Gallery(embed_tensor(m, images.to(device)), labels.to(device), backend="torch")
            atk = attacks.create(aid, model=m, eps=0.05, alpha=0.01, steps=8)
            out[device] = atk(images[:32], labels[:32], gallery, generator=torch.Generator().manual_seed(2),
                              query_index=torch.arange(32))
    for k in out["cpu"].per_query:
        torch.testing.assert_close(out["cuda"].per_query[k], out["cpu"].per_query[k], atol=2.0, rtol=0.05)
    assert (out["cuda"].success == out["cpu"].success).float().mean() >= 0.9
