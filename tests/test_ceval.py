"""C-Eval: golden prompts for real val rows, request shape, categories, macro and Hard averages."""

from __future__ import annotations

from pathlib import Path

import pytest

from qwen_eval.requests import Choice
from qwen_eval.task import DataSpec, Sample
from qwen_eval.tasks.ceval import CATEGORIES, HARD_SUBJECTS, SUBJECTS, CEval

FIXTURES = Path(__file__).parent / "fixtures" / "mc" / "ceval"


def load(protocol: str = "qwen"):
    task = CEval(protocol=protocol)
    return task, {d.doc_id: d for d in task.load(DataSpec("local", str(FIXTURES)))}


ACCOUNTANT_0 = (
    '问题：甲公司是国内一家上市公司。甲公司对其各子公司实行全面预算管理，并通常使用增量预算方式进行战略控制，子公司预算需要经甲公司预算管理委员会批准后执行。2015年10月，甲公司投资了一个新的项目乙(子公司)。2015年11月，甲公司启动2016年度预算编制工作，此时甲公司应要求乙公司编制____。\n'
    'A. 增量预算\n'
    'B. 零基预算\n'
    'C. 固定预算\n'
    'D. 弹性预算\n'
    '答案：B\n'
    '\n'
    '问题：债务人转让全部合同义务的，下列说法不正确的是____。\n'
    'A. 须债权人同意方可进行\n'
    'B. 新债务人可主张原债务人对债权人的抗辩\n'
    'C. 债务人转移债务的，原债务人对债权人享有债权的，新债务人可以向债权人主张抵销\n'
    'D. 非专属于原债务人自身的从债务，一并转让给新债务人\n'
    '答案：C\n'
    '\n'
    '问题：某公司2012年以150万元的价格进口了1台仪器；2014年6月因出现故障运往日本修理(出境时已向海关报明)，2014年10月，按海关规定的期限复运进境。此时，该仪器的国际市场价格为200万元。若经海关审定的修理费和料件费为40万元，运费为1.5万元，保险费用为2.8万元，进口关税税率为6%。该仪器复运进境时，应缴纳的进口关税为____万元。\n'
    'A. 9\n'
    'B. 3\n'
    'C. 2.4\n'
    'D. 12\n'
    '答案：C\n'
    '\n'
    '问题：公开发行公司债券，证监会同意注册的决定自作出之日起一定期限内有效，发行人应当该期限内发行公司债券。该期限是____。\n'
    'A. 6个月\n'
    'B. 1年\n'
    'C. 2年\n'
    'D. 3年\n'
    '答案：C\n'
    '\n'
    '问题：某集团公司在一家银行开设了许多不同的银行账户，那么，该集团公司可以要求银行在考虑其利息及透支限额时将其子公司的账户余额集中起来。下列不属于现金余额集中的好处是____。\n'
    'A. 盈余与赤字相抵\n'
    'B. 加强控制\n'
    'C. 增加投资机会\n'
    'D. 匹配\n'
    '答案：D\n'
    '\n'
    '问题：下列关于税法基本原则的表述中，不正确的是____。\n'
    'A. 税收法定原则包括税收要件法定原则和税务合法性原则\n'
    'B. 税收公平原则源于法律上的平等性原则\n'
    'C. 税收效率原则包含经济效率和行政效率两个方面\n'
    'D. 税务机关按法定程序依法征税，可以自由做出减征、停征或免征税款的决定\n'
    '答案：'
)

# A C-Eval Hard subject: LaTeX backslashes throughout, and a query whose four choices are bare
# numbers (the column also holds formulas, so pandas keeps it as text).
HIGH_SCHOOL_MATHEMATICS_2 = (
    '问题：已知函数$f(x)=\\sin(\\omega x-\\frac{\\pi}{6})(\\omega>0).$若f(x)在$\\left(0,\\frac{\\pi}{2}\\right)$上有且仅有三个极值点，则不正确的有____\n'
    'A. f(x)在区间$[0, \\frac{\\pi}{4}]$上的最小值可以等于$-\\frac{1}{2}$\n'
    'B. 若$f(x)$的图像关于点$\\left(\\frac{\\pi}{3},0\\right)$对称，则$f(x)$在区间$\\left(0,\\frac{\\pi}{12}\\right)$上单调递增\n'
    'C. $f(x)$的最小正周期可能为$\\frac{\\pi}{3}$\n'
    'D. 若$f\\left(0\\right)+f\\left(\\frac{\\pi}{2}\\right)=0$，将$ g(x)=\\sin{2x}$的图象向右平移$\\frac{\\pi}{12}$个单位可得到$y=f\\left(\\frac{x}{3}\\right)$的图象\n'
    '答案：A\n'
    '\n'
    '问题：二项式$(\\sqrt[3]{3}+x)^{12}$的展开式中，系数为有理数的项的个数为____\n'
    'A. 6\n'
    'B. 5\n'
    'C. 4\n'
    'D. 3\n'
    '答案：B\n'
    '\n'
    '问题：为加快新冠肺炎检测效率，某检测机构采取合并检测法，即将多人的拭子样本合并检测，若为阴性，则可以确定所有样本都是阴性的，若为阳性，则还需要对本组的每个人再做检测．现对20名密切接触者的拭子样本进行合并检测，每份样本的检测结果是阴性还是阳性都是相互独立的，每人检测结果呈阳性的概率为p，且检测次数的数学期望为20，则p的值为____\n'
    'A. $1-({\\frac{1}{20}})^{\\frac{1}{20}}$\n'
    'B. $1-(\\frac{1}{20})^{\\frac{1}{21}}$\n'
    'C. $1-\\left(\\frac{1}{21}\\right)^{\\frac{1}{20}}$\n'
    'D. $1-\\left(\\frac{1}{21}\\right)^{\\frac{1}{21}}$\n'
    '答案：A\n'
    '\n'
    '问题：在矩形ABCD种，AB=1,AD=2,则点P在以点C为圆心且与BD相切的圆上，若$\\overrightarrow{AP} = \\lambda\\overrightarrow{AB}+\\mu\\overrightarrow{AD}$,则$\\lambda+\\mu$的最大值为____\n'
    'A. 3\n'
    'B. $2\\sqrt{2}$\n'
    'C. $\\sqrt{5}$\n'
    'D. 2\n'
    '答案：A\n'
    '\n'
    '问题：已知$\\left \\{ a_n \\right \\}$ 为等差数列,若$a_1+a_5+a_9=8\\pi$，则 $\\cos (a_3+a_7)$的值为____\n'
    'A. $\\frac{\\sqrt{3}}{2}$\n'
    'B. $-\\frac{\\sqrt{3}}{2}$\n'
    'C. $\\frac{1}{2}$\n'
    'D. $-\\frac{1}{2}$\n'
    '答案：D\n'
    '\n'
    '问题：$\\forall x\\neq0$,$\\left(x+\\frac{1}{x}\\right)^{10}$可写成关于$\\left(x^2+\\frac{1}{x^2}\\right)$的多项式，则该多项式各项系数之和为____\n'
    'A. 240\n'
    'B. 241\n'
    'C. 242\n'
    'D. 243\n'
    '答案：'
)


@pytest.mark.parametrize("protocol", ["qwen", "clean"])
@pytest.mark.parametrize("doc_id, expected, gold", [("accountant/0", ACCOUNTANT_0, "D"),
                                                    ("high_school_mathematics/2", HIGH_SCHOOL_MATHEMATICS_2, "D")])
def test_golden_prompts(protocol, doc_id, expected, gold):
    task, docs = load(protocol)
    (request,) = task.requests(docs[doc_id])
    assert request == Choice(context=expected, continuations=("A", "B", "C", "D"))
    assert docs[doc_id].question.answer == gold


def test_subjects_categories_and_hard_subset():
    assert len(SUBJECTS) == 52
    counts = {c: sum(v == c for v in SUBJECTS.values()) for c in CATEGORIES}
    assert counts == {"stem": 20, "social_sciences": 10, "humanities": 11, "other": 11}
    assert len(HARD_SUBJECTS) == 8 and all(SUBJECTS[s] == "stem" for s in HARD_SUBJECTS)


def _samples(subject: str, scores: list[float]) -> list[Sample]:
    return [Sample(f"{subject}/{i}", "p", "A", [0.0] * 4, "A", s, {"subject": subject}) for i, s in enumerate(scores)]


def test_one_question_a_subject_still_has_a_standard_error():
    """limit=1: a subject of one answer has no variance of its own; the macro average's standard
    error then uses the pooled variance of all answers, not 0 (13 right of 52, as the real
    model's chat run: about the binomial 0.060)."""
    import math

    samples = [s for i, subject in enumerate(sorted(SUBJECTS)[:52]) for s in _samples(subject, [int(i % 4 == 0)])]
    metrics = CEval().aggregate(samples)
    assert metrics["acc"] == pytest.approx(13 / 52)
    p = 13 / 52
    assert metrics["acc_stderr"] == pytest.approx(math.sqrt(p * (1 - p) * 52 / 51) / math.sqrt(52))
    # a subject with two or more answers keeps its own standard error
    two = CEval().aggregate(_samples("law", [1, 0]) + _samples("logic", [1]))
    own = math.sqrt(0.5 * 0.5 * 2 / 1 / 2)  # law: sd of (1, 0) over sqrt(2)
    pooled = (2 / 3) * (1 / 3) * 3 / 2  # the variance of (1, 0, 1)
    assert two["acc_stderr"] == pytest.approx(math.sqrt(own ** 2 + pooled) / 2)


def test_aggregate_is_a_macro_average_over_subjects():
    samples = (_samples("advanced_mathematics", [1, 1, 1, 1])  # stem, hard
               + _samples("computer_network", [0, 0])           # stem
               + _samples("law", [1, 0, 0, 0]))                 # humanities
    metrics = CEval().aggregate(samples)
    assert metrics["acc"] == pytest.approx((1 + 0 + 0.25) / 3)  # micro would be 5/10
    assert metrics["stem/acc"] == pytest.approx(0.5)
    assert metrics["humanities/acc"] == pytest.approx(0.25)
    assert metrics["hard/acc"] == pytest.approx(1.0)
    assert "other/acc" not in metrics and "social_sciences/acc" not in metrics
    assert metrics["acc_stderr"] > 0
    assert CEval.model_card_column == "C-Eval" and CEval.default_shots == 5
