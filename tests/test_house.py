"""The house: the core reads in an evening, imports flow one way, and nothing past a door checks.

The core is what the pipeline stands on: `minitome/pipeline.py`, the tokenizer, the text encoder and the autoencoders
(the VAE, the tiny one) it is handed, and every file of the repository they import, followed. Lines of code leave
out docstrings, comments and blank lines (the explanations that teach are not counted against it); the total counts every line.
"""
import ast
import inspect
import io
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("minitome", "unet", "sampler", "weights")
CORE_ENTRIES = ("minitome/pipeline.py", "minitome/tokenizer.py", "minitome/clip.py", "minitome/vae.py",
                "minitome/taesd.py")
MAX_CODE, MAX_LINES = 1400, 2500


def module_file(name: str):
    base = ROOT.joinpath(*name.split("."))
    return next((p for p in (base.with_suffix(".py"), base / "__init__.py") if p.is_file()), None)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set:
    """The repository's files that `path` imports, anywhere in it (inside functions too), each package's
    __init__.py on the way included, as Python runs them (but not the packages `path` itself sits in)."""
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    named = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            named.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else [])) \
                if node.level else node.module
            named.add(base)
            named.update(f"{base}.{alias.name}" for alias in node.names)
    own = {".".join(package[:i]) for i in range(1, len(package) + 1)}  # its own packages, already running
    files = set()
    for name in named:
        parts = name.split(".")
        if parts[0] in PACKAGES:
            files.update(f for f in (module_file(".".join(parts[:i])) for i in range(1, len(parts) + 1)
                                     if ".".join(parts[:i]) not in own) if f)
    return files - {path}


def source_files() -> list:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def closure(entries) -> set:
    seen, todo = set(), [ROOT / e for e in entries]
    while todo:
        f = todo.pop()
        if f not in seen:
            seen.add(f)
            todo.extend(imports_of(f))
    return seen


def code_lines(path: Path) -> int:
    """Lines holding code: not blank, not only a comment, not part of a docstring."""
    text = path.read_text(encoding="utf-8")
    docstrings = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                docstrings.update(range(first.lineno, first.end_lineno + 1))
    code = set()
    skip = (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER)
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type not in skip:
            code.update(n for n in range(token.start[0], token.end[0] + 1) if n not in docstrings)
    return len(code)


def test_the_core_reads_in_an_evening():
    core = closure(CORE_ENTRIES)
    code = sum(code_lines(f) for f in core)
    lines = sum(len(f.read_text(encoding="utf-8").splitlines()) for f in core)
    print(f"the core: {len(core)} files, {code} lines of code, {lines} lines in all")
    assert {"minitome/tome.py", "unet/attention.py", "sampler/plms.py", "minitome/vae.py"} <= \
        {str(f.relative_to(ROOT)) for f in core}  # the walk reaches the model, the methods and the samplers
    assert code <= MAX_CODE and lines <= MAX_LINES, (code, lines)
    assert not any(f.is_relative_to(ROOT / "minitome" / "cli") or f.is_relative_to(ROOT / "minitome" / "lab") or
                   f.is_relative_to(ROOT / "weights") for f in core)  # the wings stay outside


def test_the_code_counter_counts_code_only(tmp_path):
    example = tmp_path / "example.py"
    example.write_text('"""A docstring\nof two lines."""\n# a comment\n\nx = (1 +\n     2)  # and one after\n\n\n'
                       'def f():\n    """Its docstring."""\n    return x\n')
    assert code_lines(example) == 4  # the two lines of x, def, return


def test_imports_flow_one_way():
    """No circle among the repository's files, and the layers the house is built on: the model never imports the
    run, the samplers nothing of minitome/, weights/ never the pipeline."""
    graph = {f: imports_of(f) for f in source_files()}
    for f, targets in graph.items():
        where = str(f.relative_to(ROOT))
        names = {module_name(t) for t in targets}
        if where.startswith("unet/"):
            assert "minitome.run" not in names and "minitome.pipeline" not in names, where
        if where.startswith("sampler/"):
            assert not {n for n in names if n.split(".")[0] in ("minitome", "unet", "weights")}, where
        if where.startswith("weights/"):
            assert "minitome.pipeline" not in names and not any(n.split(".")[:2] == ["minitome", "cli"] for n in names), where
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(f):  # Tarjan's strongly connected components: a circle is one of more than one file
        index[f] = low[f] = len(index)
        stack.append(f), on_stack.add(f)
        for g in graph.get(f, ()):
            if g not in index:
                visit(g)
                low[f] = min(low[f], low[g])
            elif g in on_stack:
                low[f] = min(low[f], index[g])
        if low[f] == index[f]:
            component = []
            while True:
                g = stack.pop()
                on_stack.discard(g)
                component.append(g)
                if g == f:
                    break
            if len(component) > 1:
                circles.append(sorted(str(c.relative_to(ROOT)) for c in component))

    for f in graph:
        if f not in index:
            visit(f)
    assert circles == []


def raises_in(function) -> list:
    """The `raise` statements in a function's own code (nested functions included)."""
    tree = ast.parse(inspect.cleandoc("\n" + inspect.getsource(function)))
    return [ast.unparse(node) for node in ast.walk(tree) if isinstance(node, ast.Raise)]


def hot_path() -> list:
    """Every function a UNet call runs past `UNetModel.forward`'s entry, and every sampler's loop."""
    import sampler
    from minitome import pipeline, run, todo, tome
    from sampler import plms, schedule
    from unet import attention, blocks, call, model
    functions = [model.UNetModel.predict, model.UNetModel.up, model.run_layer, blocks.timestep_embedding,
                 call.Call.plan, call.Call.once, run.Run.open, run.Run.close, run.Run.call, pipeline.noise_estimate,
                 tome.tome_plan, tome.partition, tome.match, tome.merge, tome.unmerge, tome.Plan, tome.downsample_level,
                 tome.ToMeConfig.partitions, todo.downsample_kv, plms.plms_eps, schedule.ddim_step, schedule.clean_estimate,
                 sampler.sample]
    for module in (attention, blocks):
        functions += [cls.forward for cls in vars(module).values() if inspect.isclass(cls) and
                      cls.__module__ == module.__name__ and "forward" in vars(cls)]
    for row in sampler.SAMPLERS.values():
        functions += [row.sample, row.start, row.schedule]
    return functions


def test_nothing_past_a_door_checks():
    functions = hot_path()
    assert len(functions) > 30
    found = {f.__qualname__: raises_in(f) for f in functions}
    assert {name: r for name, r in found.items() if r} == {}


@pytest.mark.parametrize("door", ["unet.model.UNetModel.forward", "minitome.pipeline.sample_latents",
                                  "minitome.run.Run.__post_init__"])
def test_the_doors_check_and_the_walker_sees_it(door):
    """Teeth: the same walker finds the checks where the input enters."""
    import importlib
    owner = importlib.import_module(".".join(door.split(".")[:2]))
    for name in door.split(".")[2:]:
        owner = getattr(owner, name)
    if door.endswith("__post_init__"):  # the run's door calls the one rule of which methods run together
        from unet.call import check_methods
        assert "check_methods" in inspect.getsource(owner) and raises_in(check_methods)
    else:
        assert raises_in(owner)


@pytest.mark.parametrize("config", ["tiny", "tiny-wide"])
def test_the_door_knows_which_latents_a_groupnorm_cannot_take(config):
    """`UNetConfig.fewest_normalized` < 2 exactly where torch's GroupNorm refuses the call (one value per group)."""
    import torch
    from unet import UNetConfig, UNetModel
    c = UNetConfig.tiny() if config == "tiny" else UNetConfig.tiny(model_channels=64)
    unet = UNetModel(c).eval()
    for hw in [(1, 1), (2, 2), (1, 3), (2, 5), (3, 3), (4, 4)]:
        for batch in (1, 2):
            try:
                with torch.no_grad():
                    unet(torch.randn(batch, 4, *hw), torch.tensor(10), torch.randn(batch, 77, c.context_dim))
                runs = True
            except ValueError as error:
                assert "Expected more than 1 value per channel" in str(error)
                runs = False
            assert runs == (c.fewest_normalized(hw, batch) >= 2), (hw, batch)


def test_an_image_too_small_for_the_unet_is_refused_before_any_model_work(tiny_pipeline):
    import weights
    from minitome.checks import Refusal
    from minitome.pipeline import sample_latents
    sd = weights.load(tiny_pipeline[1])
    with pytest.raises(Refusal, match="^16x16 is too small for this UNet at 1 latent per call"):
        sample_latents(sd, "a cat", steps=2, guidance=1.0, width=16, height=16, sampler="ddim", spacing="trailing")
    assert sample_latents(sd, "a cat", steps=2, guidance=7.5, width=16, height=16, sampler="ddim",
                          spacing="trailing").shape == (1, 4, 2, 2)  # the guided pair is two latents per call
