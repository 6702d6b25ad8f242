"""MMLU: golden prompts for real rows, request shape, categories and micro-averaged metrics."""

from __future__ import annotations

from pathlib import Path

import pytest

from qwen_eval.requests import Choice, ChoiceResult
from qwen_eval.task import DataSpec, Sample
from qwen_eval.tasks.mmlu import CATEGORIES, MMLU, SUBJECTS, category_of

FIXTURES = Path(__file__).parent / "fixtures" / "mc" / "mmlu"


def load(protocol: str = "qwen", shots: int | None = None, limit: int | None = None) -> dict:
    task = MMLU(shots=shots, protocol=protocol)
    return task, {d.doc_id: d for d in task.load(DataSpec("local", str(FIXTURES)), limit)}


ABSTRACT_ALGEBRA_SHOTS = (
    'The following are multiple choice questions (with answers) about abstract algebra.\n'
    '\n'
    'Question: Find all c in Z_3 such that Z_3[x]/(x^2 + c) is a field.\n'
    'A. 0\n'
    'B. 1\n'
    'C. 2\n'
    'D. 3\n'
    'Answer: B\n'
    '\n'
    'Question: Statement 1 | If aH is an element of a factor group, then |aH| divides |a|. Statement 2 | If H and K are subgroups of G then HK is a subgroup of G.\n'
    'A. True, True\n'
    'B. False, False\n'
    'C. True, False\n'
    'D. False, True\n'
    'Answer: B\n'
    '\n'
    'Question: Statement 1 | Every element of a group generates a cyclic subgroup of the group. Statement 2 | The symmetric group S_10 has 10 elements.\n'
    'A. True, True\n'
    'B. False, False\n'
    'C. True, False\n'
    'D. False, True\n'
    'Answer: C\n'
    '\n'
    'Question: Statement 1| Every function from a finite set onto itself must be one to one. Statement 2 | Every subgroup of an abelian group is abelian.\n'
    'A. True, True\n'
    'B. False, False\n'
    'C. True, False\n'
    'D. False, True\n'
    'Answer: A\n'
    '\n'
    'Question: Find the characteristic of the ring 2Z.\n'
    'A. 0\n'
    'B. 3\n'
    'C. 12\n'
    'D. 30\n'
    'Answer: A\n'
    '\n'
)

# The five college_mathematics dev rows: the third keeps the file's \r\n line breaks inside its
# quoted question (pandas and the csv module both keep them), the fifth has a backslash.
COLLEGE_MATHEMATICS_SHOTS = (
    'The following are multiple choice questions (with answers) about college mathematics.\n'
    '\n'
    "Question: Let V be the set of all real polynomials p(x). Let transformations T, S be defined on V by T:p(x) -> xp(x) and S:p(x) -> p'(x) = d/dx p(x), and interpret (ST)(p(x)) as S(T(p(x))). Which of the following is true?\n"
    'A. ST = 0\n'
    'B. ST = T\n'
    'C. ST = TS\n'
    'D. ST - TS is the identity map of V onto itself.\n'
    'Answer: D\n'
    '\n'
    'Question: A tank initially contains a salt solution of 3 grams of salt dissolved in 100 liters of water. A salt solution containing 0.02 grams of salt per liter of water is sprayed into the tank at a rate of 4 liters per minute. The sprayed solution is continually mixed with the salt solution in the tank, and the mixture flows out of the tank at a rate of 4 liters per minute. If the mixing is instantaneous, how many grams of salt are in the tank after 100 minutes have elapsed?\n'
    'A. 2\n'
    'B. 2 - e^-2\n'
    'C. 2 + e^-2\n'
    'D. 2 + e^-4\n'
    'Answer: D\n'
    '\n'
    'Question: Let A be a real 2x2 matrix. Which of the following statements must be true?\r\n'
    'I. All of the entries of A^2 are nonnegative.\r\n'
    'II. The determinant of A^2 is nonnegative.\r\n'
    'III. If A has two distinct eigenvalues, then A^2 has two distinct eigenvalues.\n'
    'A. I only\n'
    'B. II only\n'
    'C. III only\n'
    'D. II and III only\n'
    'Answer: B\n'
    '\n'
    'Question: Suppose that f(1 + x) = f(x) for all real x. If f is a polynomial and f(5) = 11, then f(15/2)\n'
    'A. -11\n'
    'B. 0\n'
    'C. 11\n'
    'D. 33/2\n'
    'Answer: C\n'
    '\n'
    'Question: Let A be the set of all ordered pairs of integers (m, n) such that 7m + 12n = 22. What is the greatest negative number in the set B = {m + n : (m, n) \\in A}?\n'
    'A. -5\n'
    'B. -4\n'
    'C. -3\n'
    'D. -2\n'
    'Answer: B\n'
    '\n'
)


def test_golden_prompt_plain_row():
    task, docs = load()
    expected = ABSTRACT_ALGEBRA_SHOTS + (
        'Question: Find the degree for the given field extension Q(sqrt(2), sqrt(3), sqrt(18)) over Q.\n'
        'A. 0\n'
        'B. 4\n'
        'C. 2\n'
        'D. 6\n'
        'Answer:'
    )
    (request,) = task.requests(docs["abstract_algebra/0"])
    assert request == Choice(context=expected, continuations=(" A", " B", " C", " D"))
    assert docs["abstract_algebra/0"].question.answer == "B"


# college_mathematics test row 8: choice A is the bare cell `None`. Qwen's pd.read_csv turns it
# into NaN and the f-string prints `nan`; the clean protocol keeps the text.
COLLEGE_MATHEMATICS_8_QWEN = (
    'Question: Let V be a finite-dimensional real vector space and let P be a linear transformation of V such that P^2 = P. Which of the following must be true?\n'
    'I. P is invertible.\n'
    'II. P is diagonalizable.\n'
    'III. P is either the identity transformation or the zero transformation.\n'
    'A. nan\n'
    'B. I only\n'
    'C. II only\n'
    'D. III only\n'
    'Answer:'
)
COLLEGE_MATHEMATICS_8_CLEAN = (
    'Question: Let V be a finite-dimensional real vector space and let P be a linear transformation of V such that P^2 = P. Which of the following must be true?\n'
    'I. P is invertible.\n'
    'II. P is diagonalizable.\n'
    'III. P is either the identity transformation or the zero transformation.\n'
    'A. None\n'
    'B. I only\n'
    'C. II only\n'
    'D. III only\n'
    'Answer:'
)


@pytest.mark.parametrize("protocol, query", [("qwen", COLLEGE_MATHEMATICS_8_QWEN),
                                             ("clean", COLLEGE_MATHEMATICS_8_CLEAN)])
def test_golden_prompt_none_cell_under_both_protocols(protocol, query):
    task, docs = load(protocol)
    assert task.prompt(docs["college_mathematics/8"]) == COLLEGE_MATHEMATICS_SHOTS + query
    assert docs["college_mathematics/8"].question.answer == "C"


def test_golden_prompt_keeps_a_leading_space_in_a_cell():
    # Row 9's choice D is written ", Both (a) and (b)." -- pandas does not strip it, so neither do we.
    task, docs = load()
    expected = COLLEGE_MATHEMATICS_SHOTS + (
        'Question: Which of the following is true?\n'
        'A. Every compact space is complete\n'
        'B. Every complete space is compact\n'
        'C. Neither (a) nor (b).\n'
        'D.  Both (a) and (b).\n'
        'Answer:'
    )
    assert task.prompt(docs["college_mathematics/9"]) == expected


def test_fewer_shots_take_the_first_dev_rows_and_zero_shot_keeps_the_header():
    task, docs = load(shots=1)
    first_shot = ABSTRACT_ALGEBRA_SHOTS.split("Question: Statement 1 | If aH")[0]
    assert task.prompt(docs["abstract_algebra/0"]).startswith(first_shot + "Question: Find the degree")
    task, docs = load(shots=0)
    assert task.prompt(docs["abstract_algebra/0"]) == (
        "The following are multiple choice questions (with answers) about abstract algebra.\n\n"
        "Question: Find the degree for the given field extension Q(sqrt(2), sqrt(3), sqrt(18)) over Q.\n"
        "A. 0\nB. 4\nC. 2\nD. 6\nAnswer:")


def test_limit_is_per_subject_and_doc_ids_are_file_rows():
    _, docs = load(limit=3)
    assert list(docs) == ["abstract_algebra/0", "abstract_algebra/1", "abstract_algebra/2",
                          "college_mathematics/0", "college_mathematics/1", "college_mathematics/2"]


def test_subjects_and_categories_are_complete():
    assert len(SUBJECTS) == 57
    counts = {c: sum(category_of(s) == c for s in SUBJECTS) for c in CATEGORIES}
    assert counts == {"stem": 18, "humanities": 13, "social_sciences": 12, "other": 14}
    assert category_of("anatomy") == "other" and category_of("computer_security") == "stem"


def test_score_records_probabilities_prediction_and_gold():
    task, docs = load()
    doc = docs["college_mathematics/8"]  # gold C
    sample = task.score(doc, [ChoiceResult(logprobs=(-3.0, -2.0, -0.5, -2.0), is_greedy=(False,) * 4)])
    assert (sample.prediction, sample.target, sample.score) == ("C", "C", 1.0)
    assert sample.extra["subject"] == "college_mathematics" and sample.extra["protocol"] == "qwen"
    assert sum(sample.extra["probs"]) == pytest.approx(1.0)
    assert max(sample.extra["probs"]) == sample.extra["probs"][2]
    assert sample.to_json()["response"] == [-3.0, -2.0, -0.5, -2.0]


def _sample(subject: str, row: int, score: float) -> Sample:
    return Sample(f"{subject}/{row}", "p", "A", [0.0] * 4, "A", score, {"subject": subject})


def test_aggregate_is_micro_overall_and_within_categories():
    samples = ([_sample("abstract_algebra", i, s) for i, s in enumerate([1, 1, 1, 0])]  # stem
               + [_sample("anatomy", 0, 0.0)]                                          # other (health)
               + [_sample("philosophy", i, s) for i, s in enumerate([1, 0])])          # humanities
    metrics = MMLU().aggregate(samples)
    assert metrics["acc"] == pytest.approx(4 / 7)  # micro: every question weighs the same
    assert metrics["stem/acc"] == pytest.approx(0.75)
    assert metrics["other/acc"] == 0.0
    assert metrics["humanities/acc"] == pytest.approx(0.5)
    assert "social_sciences/acc" not in metrics  # no subject of it was evaluated
    assert metrics["subject/abstract_algebra/acc"] == pytest.approx(0.75)
    assert metrics["acc_stderr"] > 0 and metrics["stem/acc_stderr"] > 0
    assert MMLU.headline in metrics and MMLU.model_card_column == "MMLU"
