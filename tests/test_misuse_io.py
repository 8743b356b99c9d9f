"""Issue #23 for export and training: dict (keyword) example inputs export like positional ones;
bfloat16 models, mismatched example inputs, batches fit cannot read, empty loaders, wrong loss
functions and frozen models get a graphprune error that says what to do; dict batches train."""

import copy

import numpy as np
import onnxruntime
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset

import graphprune
from graphprune import models

transformers = pytest.importorskip("transformers")

VOCAB, TOKENS = 50, 12


class KeywordNet(torch.nn.Module):
    """Takes its mask by keyword only, and a float scale that is no tensor."""

    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(4, 8), torch.nn.Linear(8, 3)

    def forward(self, x, *, mask, scale=1.0):
        return self.b(torch.relu(self.a(x)) * mask) * scale


def _onnx_run(path, **feeds):
    session = onnxruntime.InferenceSession(str(path))
    return session, session.run(None, {k: v.numpy() for k, v in feeds.items()})


# --- export --------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:.*cannot check that an input takes it")  # the slim BERT's traced mask path
def test_export_takes_a_hugging_face_models_keyword_inputs(tmp_path):
    """A BERT and the slim model ``apply`` made of it from the same dict export with inputs named
    input_ids and attention_mask, a dynamic batch, and run a fresh padded batch as PyTorch does."""
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=VOCAB, max_position_embeddings=32, num_hidden_layers=2, num_attention_heads=4,
                                     hidden_size=32, intermediate_size=64)
    model = transformers.BertModel(config).eval()
    ids, mask = torch.randint(0, VOCAB, (2, 8)), torch.ones(2, 8, dtype=torch.long)
    mask[0, 5:] = 0
    slim = graphprune.apply(model, "l1", 0.5, dict(input_ids=ids, attention_mask=mask)).model
    fresh_ids, fresh_mask = torch.randint(0, VOCAB, (3, 8)), torch.ones(3, 8, dtype=torch.long)
    fresh_mask[2, 3:] = 0
    for m in (model, slim):
        path = tmp_path / "bert.onnx"
        report = graphprune.export_onnx(m, str(path), dict(input_ids=ids, attention_mask=mask))
        assert report.dynamic_batch_checked and report.relative_diff < 1e-5
        session, (hidden, *_) = _onnx_run(path, input_ids=fresh_ids, attention_mask=fresh_mask)
        assert [(i.name, i.shape) for i in session.get_inputs()] == [("input_ids", ["batch", "length"]), ("attention_mask", ["batch", "length"])]
        with torch.no_grad():
            want = m(input_ids=fresh_ids, attention_mask=fresh_mask)["last_hidden_state"]
        assert np.abs(hidden - want.numpy()).max() < 1e-4


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_export_takes_keyword_tensors_and_bakes_in_keyword_constants(tmp_path, exporter):
    x, mask = torch.randn(2, 4), torch.rand(2, 8)
    model = KeywordNet().eval()
    report = graphprune.export_onnx(model, str(tmp_path / "k.onnx"), dict(x=x, mask=mask, scale=2.0), exporter=exporter)
    assert report.exporter == exporter and report.dynamic_batch_checked and report.relative_diff < 1e-5
    x, mask = torch.randn(5, 4), torch.rand(5, 8)
    session, (got,) = _onnx_run(tmp_path / "k.onnx", x=x, mask=mask)
    assert [(i.name, i.shape) for i in session.get_inputs()] == [("x", ["batch", 4]), ("mask", ["batch", 8])]
    assert np.abs(got - model(x, mask=mask, scale=2.0).detach().numpy()).max() < 1e-5


def test_bfloat16_export_says_to_export_a_float32_copy(tmp_path):
    model, x = KeywordNet().to(torch.bfloat16).eval(), dict(x=torch.randn(2, 4), mask=torch.rand(2, 8))
    with pytest.raises(graphprune.ExportError, match=r"bfloat16.*export a float32 copy, export_onnx\(copy.deepcopy\(model\).float\(\)"):
        graphprune.export_onnx(model, str(tmp_path / "b.onnx"), {k: v.bfloat16() for k, v in x.items()})
    report = graphprune.export_onnx(copy.deepcopy(model).float(), str(tmp_path / "b.onnx"), x)  # the advice works
    assert report.relative_diff < 1e-5
    assert model.a.weight.dtype == torch.bfloat16


class CastsItsInput(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x.float())


def test_example_input_of_another_dtype_or_device_is_named(tmp_path):
    path = str(tmp_path / "m.onnx")
    model = torch.nn.Linear(4, 3).eval()
    with pytest.raises(graphprune.ExampleInputError, match=r"'input_0' is torch.float64 but the model's weights are torch.float32: .*x.to\(torch.float32\)"):
        graphprune.export_onnx(model, path, torch.randn(2, 4, dtype=torch.float64))
    with pytest.raises(graphprune.ExampleInputError, match=r"'mask' is on meta but the model's weights are on cpu: .*x.to\('cpu'\)"):
        graphprune.export_onnx(KeywordNet().eval(), path, dict(x=torch.randn(2, 4), mask=torch.rand(2, 8, device="meta")))
    with pytest.raises(RuntimeError) as info:  # the model's own failure (a wrong shape) is no mismatch: passed on as it is
        graphprune.export_onnx(model, path, torch.randn(2, 5))
    assert not isinstance(info.value, graphprune.GraphPruneError)
    assert graphprune.export_onnx(CastsItsInput().eval(), path, torch.randn(2, 4, dtype=torch.float64)).relative_diff < 1e-5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_example_input_on_the_cpu_for_a_model_on_the_gpu_is_named(tmp_path):
    with pytest.raises(graphprune.ExampleInputError, match=r"is on cpu but the model's weights are on cuda:0: .*x.to\('cuda:0'\)"):
        graphprune.export_onnx(torch.nn.Linear(4, 3).cuda().eval(), str(tmp_path / "m.onnx"), torch.randn(2, 4))


# --- fit: dict batches ---------------------------------------------------------------------------


class Tokens(Dataset):
    """Hugging Face style samples: strided token runs, their own labels (the model shifts them)."""

    def __len__(self):
        return 32

    def __getitem__(self, i):
        ids = (torch.arange(TOKENS) * 3 + i) % VOCAB
        return dict(input_ids=ids, attention_mask=torch.ones(TOKENS, dtype=torch.long), labels=ids)


def _gpt2():
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=16, n_embd=32, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(config)


def _eval_loss(model, batch):
    model.eval()
    with torch.no_grad():
        return float(model(**batch)["loss"])


def test_fit_trains_a_hugging_face_lm_on_dict_batches_with_its_own_loss():
    model = _gpt2()
    loader = DataLoader(Tokens(), batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(0))
    batch = next(iter(DataLoader(Tokens(), batch_size=32)))
    before, weights = _eval_loss(model, batch), [p.detach().clone() for p in model.parameters()]
    history = graphprune.fit(model, loader, None, 3, optimizer=torch.optim.Adam(model.parameters(), 1e-2), progress=False, device="cpu")
    assert history[0].train_loss > history[1].train_loss > history[2].train_loss
    assert _eval_loss(model, batch) < 0.6 * before
    assert all(not torch.equal(w, p) for w, p in zip(weights, model.parameters()))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_fit_moves_dict_batches_to_the_device():
    model, batches = _gpt2(), list(DataLoader(Tokens(), batch_size=8))
    history = graphprune.fit(model, batches, None, 2, optimizer=torch.optim.Adam(model.parameters(), 1e-2), progress=False, device="cuda")
    assert next(model.parameters()).is_cuda and history[1].train_loss < history[0].train_loss


def test_fit_dict_batches_with_a_loss_fn_of_output_and_batch():
    """loss_fn(output, batch): here the shifted cross-entropy by hand, which is GPT-2's own loss."""
    model = _gpt2()
    batch = next(iter(DataLoader(Tokens(), batch_size=32)))

    def shifted(output, batch):
        return F.cross_entropy(output.logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten())

    model.eval()
    with torch.no_grad():
        assert abs(float(shifted(model(**batch), batch)) - _eval_loss(model, batch)) < 1e-5
    before = _eval_loss(model, batch)
    graphprune.fit(model, DataLoader(Tokens(), batch_size=8), shifted, 3, optimizer=torch.optim.Adam(model.parameters(), 1e-2),
                   progress=False, device="cpu")
    assert _eval_loss(model, batch) < 0.7 * before


def test_fit_trains_a_pruned_llama_on_dict_batches():
    """The pruned model is a LlamaForCausalLM: it trains on dict batches with its loss. The slim graph
    (output="graph") takes the keys of its example inputs only: pruned without labels, fit says why
    the batch's labels do not fit."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16)
    model = transformers.LlamaForCausalLM(config)
    batches = list(DataLoader(Tokens(), batch_size=8))
    ids = batches[0]["input_ids"]
    without = graphprune.apply(model, "l1", 0.5, dict(input_ids=ids, attention_mask=batches[0]["attention_mask"]), output="graph").model
    with pytest.raises(graphprune.GraphPruneError, match=r"cannot be called with its keys \['input_ids', 'attention_mask', 'labels'\].*labels.*keys of its example inputs"):
        graphprune.fit(without, batches, None, 1, progress=False, device="cpu")
    slim = graphprune.apply(model, "l1", 0.5, dict(input_ids=ids, attention_mask=batches[0]["attention_mask"])).model
    assert type(slim) is transformers.LlamaForCausalLM
    before = _eval_loss(slim, batches[0])
    graphprune.fit(slim, batches, None, 3, optimizer=torch.optim.Adam(slim.parameters(), 1e-2), progress=False, device="cpu")
    assert _eval_loss(slim, batches[0]) < 0.7 * before


def test_dict_batch_without_a_loss_says_to_give_labels_or_loss_fn():
    batches = [{k: v for k, v in next(iter(DataLoader(Tokens(), batch_size=8))).items() if k != "labels"}]
    with pytest.raises(graphprune.GraphPruneError, match=r"no loss.*labels=.*loss_fn\(output, batch\)"):
        graphprune.fit(_gpt2(), batches, None, 1, progress=False, device="cpu")


def test_fit_and_accuracy_refuse_batches_they_cannot_read():
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))
    model = models.get("digits_cnn")
    triples = DataLoader(TensorDataset(x, y, torch.ones(16)), batch_size=8)
    with pytest.raises(graphprune.GraphPruneError, match=r"a list of 3; fit takes \(input, target\) batches.*or dicts.*model\(\*\*batch\).*collate_fn"):
        graphprune.fit(model, triples, F.cross_entropy, 1, progress=False, device="cpu")
    with pytest.raises(graphprune.GraphPruneError, match=r"a Tensor; fit takes \(input, target\) batches"):
        graphprune.fit(model, [x], F.cross_entropy, 1, progress=False, device="cpu")
    with pytest.raises(graphprune.GraphPruneError, match=r"\(input, target\) batches need a loss: pass loss_fn\(output, target\)"):
        graphprune.fit(model, [(x, y)], None, 1, progress=False, device="cpu")
    with pytest.raises(graphprune.GraphPruneError, match=r"a dict of 2; accuracy takes \(input, label\) batches.*model\(\*\*batch\)"):
        graphprune.accuracy(model, [dict(x=x, y=y)])
    with pytest.raises(graphprune.GraphPruneError, match=r"a list of 3; accuracy takes \(input, label\) batches"):
        graphprune.accuracy(model, triples)


# --- fit: other misuse ---------------------------------------------------------------------------


def _pairs(n=16, batch=8):
    g = torch.Generator().manual_seed(0)
    return list(zip(torch.rand(n, 1, 8, 8, generator=g).split(batch), torch.randint(0, 10, (n,), generator=g).split(batch)))


def test_fit_refuses_empty_train_data():
    model = models.get("digits_cnn")
    with pytest.raises(graphprune.GraphPruneError, match="train_data has no batches"):
        graphprune.fit(model, DataLoader(TensorDataset(torch.rand(0, 1, 8, 8), torch.zeros(0, dtype=torch.long))), F.cross_entropy, 1,
                       progress=False, device="cpu")
    one_pass = iter(_pairs())  # the second epoch finds it used up: no longer a silent one-epoch run
    with pytest.raises(graphprune.GraphPruneError, match="no batches.*iterator or generator is used up after one pass"):
        graphprune.fit(model, one_pass, F.cross_entropy, 2, progress=False, device="cpu")


class OneArgumentLoss(torch.nn.Module):
    def forward(self, output):
        return output.mean()


def test_fit_checks_the_loss_fn_signature_and_its_scalar():
    model = models.get("digits_cnn")
    fit = dict(progress=False, device="cpu")
    for wrong in (lambda output: output.mean(), OneArgumentLoss(), "cross_entropy"):
        with pytest.raises(graphprune.GraphPruneError, match=r"fit calls loss_fn\(output, target\) -> scalar tensor"):
            graphprune.fit(model, _pairs(), wrong, 1, **fit)
    with pytest.raises(graphprune.GraphPruneError, match=r"the loss is a tensor of shape \(8,\), not a scalar tensor.*\.mean\(\)"):
        graphprune.fit(model, _pairs(), torch.nn.CrossEntropyLoss(reduction="none"), 1, **fit)

    def broken(output, target):
        raise TypeError("a bug inside the loss function")

    with pytest.raises(TypeError, match="a bug inside the loss function") as info:  # passed on, not misreported as a signature
        graphprune.fit(model, _pairs(), broken, 1, **fit)
    assert not isinstance(info.value, graphprune.GraphPruneError)


def test_fit_epochs_zero_trains_nothing_and_negative_is_refused():
    model = models.get("digits_cnn")
    weights = [p.detach().clone() for p in model.parameters()]
    assert graphprune.fit(model, _pairs(), F.cross_entropy, 0, progress=False, device="cpu") == []
    assert all(torch.equal(w, p) for w, p in zip(weights, model.parameters()))
    with pytest.raises(graphprune.GraphPruneError, match=r"epochs=-1: pass the number of passes"):
        graphprune.fit(model, _pairs(), F.cross_entropy, -1, progress=False, device="cpu")


def test_fit_refuses_a_model_with_nothing_to_train():
    model = models.get("digits_cnn").requires_grad_(False)
    with pytest.raises(graphprune.GraphPruneError, match=r"nothing to train.*requires_grad=True"):
        graphprune.fit(model, _pairs(), F.cross_entropy, 1, progress=False, device="cpu")
    with pytest.raises(graphprune.GraphPruneError, match=r"nothing to train: no parameter the model holds"):
        graphprune.fit(torch.nn.Flatten(), _pairs(), F.cross_entropy, 1, progress=False, device="cpu")
    frozen = torch.optim.SGD([torch.nn.Parameter(torch.zeros(3), requires_grad=False)], lr=0.1)  # what it trains, not the model
    with pytest.raises(graphprune.GraphPruneError, match=r"no parameter the optimizer holds"):
        graphprune.fit(model.requires_grad_(True), _pairs(), F.cross_entropy, 1, optimizer=frozen, progress=False, device="cpu")
