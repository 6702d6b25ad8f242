"""CMMLU: golden prompts for real test rows, categories incl. China-specific, macro averages."""

from __future__ import annotations

from pathlib import Path

import pytest

from qwen_eval.requests import Choice
from qwen_eval.task import DataSpec, Sample
from qwen_eval.tasks.cmmlu import CATEGORIES, CMMLU, SUBJECTS, subjects_of

FIXTURES = Path(__file__).parent / "fixtures" / "mc" / "cmmlu"


def load(protocol: str = "qwen"):
    task = CMMLU(protocol=protocol)
    return task, {d.doc_id: d for d in task.load(DataSpec("local", str(FIXTURES)))}


# The dev file's four choice columns are all numbers, so pandas parses them as floats; each
# renders back to the text written (0.23, -0.014), so both protocols agree. The query's "0.80"
# stays "0.80" because its column in the test file also holds text.
COLLEGE_ACTUARIAL_SCIENCE_0 = (
    '问题：在三淢因模型中给出 $\\mu_x^{(j)}=0.2 j， j=1，2，3$， 则 $q_x^{(2)}=()$ 。\n'
    'A. 0.23\n'
    'B. 0.33\n'
    'C. 0.03\n'
    'D. 0.13\n'
    '答案：A\n'
    '\n'
    '问题：已知现年 18 岁的王先生， 再生存 10 年的概率为 0.95 ， 再生存 30 年的概率为 0.75 ， 则 其现年 28 岁在达到 48 岁之前的死亡概率为 ( )。\n'
    'A. 0.2409\n'
    'B. 0.2503\n'
    'C. 0.2308\n'
    'D. 0.2105\n'
    '答案：D\n'
    '\n'
    '问题：某汽车一年内发生车祸次数服从混合泊松分布， 参数 $\\lambda$ 服从 $(0，6)$ 上的均匀分布。那 么， 该汽车一年内发生车祸的次数不超过 1 次的概率为 ( )。\n'
    'A. 0.41\n'
    'B. 0.39\n'
    'C. 0.33\n'
    'D. 0.37\n'
    '答案：C\n'
    '\n'
    '问题：已知 $S(x)=1-\\frac{x}{100}， 0 \\leqslant x \\leqslant 100$， 则 $f_{30}=(\\quad)$ 。\n'
    'A. 0.8\n'
    'B. 0.7\n'
    'C. 0.5\n'
    'D. 0.6\n'
    '答案：C\n'
    '\n'
    '问题：已知 ${ }_s p_{10}=0.4$， 且 $\\mu_x=0.01+b x， x \\geqslant 0$， 则 $b$ 等于 $(\\quad$ 。\n'
    'A. -0.05\n'
    'B. -0.014\n'
    'C. 0.005\n'
    'D. 0.014\n'
    '答案：D\n'
    '\n'
    '问题：已知某两减因表的以下条件:(1)$q_x^{\\prime(2)}=2 q_x^{\\prime(1)}$(2)$q_x^{\\prime(1)}+q_x^{\\prime(2)}=q_x^{(r)}+0.18$则$q_x^{r(2)}=( )$。\n'
    'A. 0.66\n'
    'B. 0.80\n'
    'C. 0.60\n'
    'D. 0.82\n'
    '答案：'
)

AGRONOMY_0 = (
    '问题：肉牛屠宰后，胴体的哪个部位肉质较好\n'
    'A. 胸\n'
    'B. 腹\n'
    'C. 大腿\n'
    'D. 小腿\n'
    '答案：C\n'
    '\n'
    '问题：下列鸭品种中，产蛋量最高的品种是\n'
    'A. 高邮鸭\n'
    'B. 北京鸭\n'
    'C. 樱桃谷鸭\n'
    'D. 绍鸭\n'
    '答案：D\n'
    '\n'
    '问题：常见家畜中输精管不形成输精管壶腹的是\n'
    'A. 马\n'
    'B. 猪\n'
    'C. 牛\n'
    'D. 羊\n'
    '答案：B\n'
    '\n'
    '问题：牛的发情周期平均为\n'
    'A. 16～17天\n'
    'B. 21天\n'
    'C. 28天\n'
    'D. 19～20天\n'
    '答案：B\n'
    '\n'
    '问题：羊胴体中，肉质较好的部位是\n'
    'A. 胸下肉\n'
    'B. 肩胛肉\n'
    'C. 后腿肉\n'
    'D. 小腿肉\n'
    '答案：C\n'
    '\n'
    '问题：在农业生产中被当作极其重要的劳动对象发挥作用，最主要的不可替代的基本生产资料是\n'
    'A. 农业生产工具\n'
    'B. 土地\n'
    'C. 劳动力\n'
    'D. 资金\n'
    '答案：'
)


@pytest.mark.parametrize("protocol", ["qwen", "clean"])
@pytest.mark.parametrize("doc_id, expected, gold", [("college_actuarial_science/0", COLLEGE_ACTUARIAL_SCIENCE_0, "C"),
                                                    ("agronomy/0", AGRONOMY_0, "B")])
def test_golden_prompts(protocol, doc_id, expected, gold):
    task, docs = load(protocol)
    (request,) = task.requests(docs[doc_id])
    assert request == Choice(context=expected, continuations=("A", "B", "C", "D"))
    assert docs[doc_id].question.answer == gold


def test_subjects_and_categories():
    assert len(SUBJECTS) == 67
    main = [c for c in CATEGORIES if c != "china_specific"]
    for subject in SUBJECTS:  # every subject in exactly one of the four main categories
        assert sum(subject in subjects_of(c) for c in main) == 1, subject
    sizes = {c: len(subjects_of(c)) for c in CATEGORIES}
    assert sizes == {"stem": 17, "humanities": 13, "social_sciences": 22, "other": 15, "china_specific": 15}


def _samples(subject: str, scores: list[float]) -> list[Sample]:
    return [Sample(f"{subject}/{i}", "p", "A", [0.0] * 4, "A", s, {"subject": subject}) for i, s in enumerate(scores)]


def test_aggregate_is_macro_and_china_specific_overlaps_the_main_categories():
    samples = (_samples("chinese_history", [1, 1])    # humanities + china specific
               + _samples("world_history", [0, 0, 0])  # humanities
               + _samples("agronomy", [1, 0]))          # other
    metrics = CMMLU().aggregate(samples)
    assert metrics["acc"] == pytest.approx((1 + 0 + 0.5) / 3)
    assert metrics["humanities/acc"] == pytest.approx(0.5)
    assert metrics["china_specific/acc"] == pytest.approx(1.0)
    assert metrics["other/acc"] == pytest.approx(0.5)
    assert "stem/acc" not in metrics
    assert metrics["subject/world_history/acc"] == 0.0
    assert CMMLU.model_card_column == "CMMLU"
