"""The language: parsing, round-tripping, located errors, typing, canonical form."""
from __future__ import annotations

import pytest

from sycam import ProgramSyntaxError, ProgramTypeError
from sycam.lang import ast as A
from sycam.lang import check, parse, pretty
from sycam.lang.canon import canonical
from sycam.programs import list_programs, load

PROGRAMS = [
    "relu(sum_c(mean_hw(G) * A))",
    "relu(sum_c(G * A@-1 * 2)) - 3",
    "score finer(3, 0.6);\nrelu(sum_c(mean_hw(G) * A))",
    "score prob; sum_c(A)",
    "let w = mean_hw(G); relu(sum_c(w * A))",
    "fuse(each(convs, norm(relu(sum_c(mean_hw(G) * A)))), mean, input)",
    "fuse(each(-4:, sum_c(A)), each(-4:, percentile(sum_c(A), 50)), max)",
    "fuse(each([layer3, layer4.1.conv2, \"0.weird\", -1], sum_c(A)), prod)",
    "fuse(each(0:10:2, sum_c(A)), sum)",
    "threshold(sum_c(A), ?t:[0,100]=50) ^ 2",
    "sum_c(A)^-1 + sum_c(A)^?e:[0.5,3]=1.5",
    "max(sum_c(A), min(mean_c(G), sum_c(A * G))) / (1 + sum_c(A))",
    "(-3) ^ 2 * sum_c(A) - -2",
    "sum_c(A) - (mean_c(A) - max_c(A))",
    "relu(sum_c(softmax_c(S) * A)) + relu(sum_c(D / Y * A)) + relu(pc1(A))",
]


@pytest.mark.parametrize("text", PROGRAMS + [load(n).source for n in list_programs()])
def test_round_trip(text):
    program = parse(text)
    again = parse(pretty(program))
    assert again == program
    assert pretty(again) == pretty(program)


def test_ast_shape_of_gradcam():
    p = parse("relu(sum_c(mean_hw(G) * A))")
    assert p.body == A.Call("relu", (A.Call("sum_c", (A.BinOp("*", A.Call("mean_hw", (A.Terminal("G"),)), A.Terminal("A")),)),))


def test_precedence_and_associativity():
    p = parse("sum_c(A) - mean_c(A) - max_c(A) * sum_c(G) ^ 2")
    x, y, z, w = (A.Call(f, (A.Terminal(t),)) for f, t in [("sum_c", "A"), ("mean_c", "A"), ("max_c", "A"), ("sum_c", "G")])
    assert p.body == A.BinOp("-", A.BinOp("-", x, y), A.BinOp("*", z, A.Pow(w, A.Num(2.0))))


def test_params_and_score():
    p = parse("score finer(2, 0.5); winsorize(sum_c(A), ?p:[0,100]=90)")
    assert p.score == A.ScoreSpec("finer", 2, 0.5)
    assert check(p).params["p"] == A.Param("p", 0.0, 100.0, 90.0)


@pytest.mark.parametrize("text, line, column, words", [
    ("relu(sum_c(mean_hw(G) * ))", 1, 25, "expected an expression"),
    ("relu(sum_c(A)", 1, 14, "end of program"),
    ("let x = sum_c(A);\nrelux(x)", 2, 1, "unknown operator 'relux'; did you mean relu"),
    ("sum_c(A) +\n  * 2", 2, 3, "unexpected '*'"),
    ("winsorize(sum_c(A), sum_c(A))", 1, 21, "must be a number or a ?param"),
    ("relu(sum_c(A), 1)", 1, 1, "relu takes 1 argument"),
    ("score magic; sum_c(A)", 1, 7, "unknown score 'magic'"),
    ("threshold(sum_c(A), ?t:[5,1])", 1, 22, "empty range"),
    ("sum_c(A) + 1e999", 1, 12, "not finite"),
    ("", 1, 1, "empty program"),
    ("let R1 = sum_c(A);\nR1", 1, 5, "'R1' is a terminal"),
    ("let w = mean_hw(G);\nlet G = A;\nsum_c(w * G)", 2, 5, "'G' is a terminal"),
])
def test_syntax_errors_are_located(text, line, column, words):
    with pytest.raises(ProgramSyntaxError) as info:
        parse(text)
    err = info.value
    assert (err.line, err.column) == (line, column)
    assert words in str(err)
    if text:
        # the message shows the offending line and a caret under the column
        rendered = str(err).splitlines()
        assert rendered[1].strip() == text.splitlines()[line - 1].strip()
        assert rendered[2].index("^") - 2 == column - 1


@pytest.mark.parametrize("text", [
    "__import__('os').system('echo hi')",
    "A.__class__",
    "(lambda x: x)(A)",
    "exec(\"print(1)\")",
    "sum_c(A); import os",
    "open('/etc/passwd')",
    "sum_c(A) if 1 else 2",
    "[x for x in A]",
    "A[0]",
    "globals()",
])
def test_python_looking_input_is_rejected_by_the_grammar(text):
    with pytest.raises(ProgramSyntaxError):
        check(parse(text))


@pytest.mark.parametrize("text, column, words", [
    ("sum_hw(A)", 1, "must yield a Map, got Channels"),
    ("A * G", 1, "must yield a Map, got Tensor"),
    ("sum_c(A@-1 * G@-2)", 7, "different layers"),
    ("sum_c(A) + sum_c(A@0)", 1, "different layers"),
    ("each(convs, sum_c(A))", 1, "Layers<Map>; combine the layers"),
    ("fuse(sum_c(A), sum)", 1, "needs Layers<Map>"),
    ("fuse(each(convs, sum_c(A)), each(last, mean_c(mean_hw(G))), sum)", 29, "weights are over 'last'"),
    ("sum_c(sum_c(A))", 1, "needs a Tensor or Channels, got Map"),
    ("sum_c(A) + each(convs, sum_c(A))", 1, "Layers<Map> with Map"),
    ("fuse(each(convs, each(convs, sum_c(A))), sum)", 18, "cannot be nested"),
    ("norm(Y) * sum_c(A)", 1, "degenerate"),
    ("pc1(sum_c(A))", 1, "pc1 projects a Tensor"),
    ("sum_c(A) * x", 12, "unknown name 'x'"),
])
def test_type_errors_are_located(text, column, words):
    with pytest.raises(ProgramTypeError) as info:
        check(parse(text))
    assert info.value.line == 1 and info.value.column == column
    assert words in str(info.value)


def test_type_of_each_layer_lifted_ops():
    r = check(parse("fuse(each(convs, sum_c(A)), rescale(winsorize(each(convs, mean_c(mean_hw(G))), 50), 0.1, 1), sum)"))
    assert str(r.type) == "Map"
    r = check(parse("fuse(each(convs, sum_c(A)), each(convs, percentile(sum_c(A), 90)), sum)"))
    assert str(r.type) == "Map"


def test_lets_are_macros_for_layers():
    # a binding with a bare A means the layer in scope where it is used
    p = parse("let m = norm(relu(sum_c(mean_hw(G) * A))); fuse(each(convs, m), mean)")
    assert str(check(p).type) == "Map"


def test_every_reference_program_type_checks():
    names = list_programs()
    assert {"gradcam", "gradcampp", "xgradcam", "layercam", "hirescam", "scorecam", "ablationcam", "eigencam",
            "finercam", "layeravg", "winsorcam"} <= set(names)
    for name in names:
        program = load(name)
        assert str(check(program).type) == "Map", name
        assert program.source.lstrip().startswith("#"), f"{name} has no header comment"


def test_one_reader_for_names_aliases_files_and_text(tmp_path, monkeypatch):
    from sycam import SycamError
    from sycam.programs import locate, resolve_program

    gradcam = load("gradcam")
    assert resolve_program(gradcam) is gradcam
    for spec in ("gradcam", " GradCAM ", "grad-cam"):
        assert locate(spec) == ("reference", "gradcam") and resolve_program(spec) == gradcam
    assert locate("grad-cam++") == ("reference", "gradcampp")
    mine = tmp_path / "mine.cam"
    mine.write_text("# mine\nrelu(sum_c(A))\n")
    plain = tmp_path / "plain.txt"  # an existing file without the .cam suffix is a file too
    plain.write_text("sum_c(G)\n")
    assert locate(mine) == ("file", mine) and locate(str(mine)) == ("file", mine)
    assert pretty(resolve_program(str(mine))) == "relu(sum_c(A))" and pretty(load(mine)) == "relu(sum_c(A))"
    assert pretty(resolve_program(str(plain))) == "sum_c(G)"
    assert locate("relu(sum_c(A))") is None and pretty(resolve_program("relu(sum_c(A))")) == "relu(sum_c(A))"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "gradcam").write_text("sum_c(A)\n")  # a file named like a reference: the reference wins
    assert resolve_program("gradcam") == gradcam
    with pytest.raises(SycamError, match=r"program file not found: .*missing\.cam"):
        resolve_program(str(tmp_path / "missing.cam"))
    with pytest.raises(SycamError, match="unknown program 'gradkam'; did you mean gradcam"):
        resolve_program("gradkam")  # a bare word is a name, not program text
    with pytest.raises(SycamError, match="unknown program 'relu.sum_c.A..'"):
        load("relu(sum_c(A))")  # load reads names and files only


@pytest.mark.parametrize("a, b", [
    ("sum_c(A * G)", "sum_c(G * A)"),
    ("relu(relu(sum_c(A)))", "relu(sum_c(A))"),
    ("relu(sum_c(2 * A))", "2 * relu(sum_c(A))"),
    ("norm(sum_c(3 * A))", "norm(sum_c(A))"),
    ("sum_c(A) + sum_c(A)", "2 * sum_c(A)"),
    ("sq(sum_c(A))", "sum_c(A) * sum_c(A)"),
    ("abs(relu(sum_c(A)))", "relu(sum_c(A))"),
    ("max(sum_c(A), sum_c(G))", "max(sum_c(G), sum_c(A))"),
    ("let w = mean_hw(G); sum_c(w * A)", "sum_c(A * mean_hw(G))"),
])
def test_canonical_equal(a, b):
    assert canonical(parse(a)) == canonical(parse(b))


@pytest.mark.parametrize("a, b", [
    ("relu(sum_c(A))", "sum_c(A)"),
    ("sum_c(A * G)", "sum_c(A * relu(G))"),
    ("norm(sum_c(A)) + sum_c(G)", "sum_c(A) + sum_c(G)"),
    ("score finer(3, 1); sum_c(A)", "sum_c(A)"),
    ("relu(sum_c(-2 * A))", "2 * relu(sum_c(A))"),
])
def test_canonical_different(a, b):
    assert canonical(parse(a)) != canonical(parse(b))
