"""CMMLU (Li et al., 2023): 67 Chinese subjects, 5-shot, accuracy macro-averaged over subjects on
the test split, as in the Qwen-14B model card.

Data: `dev/{subject}.csv` and `test/{subject}.csv`, CSV with header `,Question,A,B,C,D,Answer`
(the first column is an unnamed row index); hub `haonan-li/cmmlu`, one config per subject.

Prompt: as C-Eval (Qwen's eval/evaluate_cmmlu.py), from the columns Question and Answer:
    问题：{q}\nA. {A}\nB. {B}\nC. {C}\nD. {D}\n答案：{ans}\n\n per shot, the query ending 答案：
with continuations "A".."D" without a space. Like the C-Eval script, Qwen's CMMLU script does not
truncate long prompts; every `Choice` backend left-truncates past its max_length, which changes
nothing at 2048: the longest 5-shot test prompt is 776 Qwen tokens.

Metric: `acc` macro over subjects; five categories (STEM, humanities, social sciences, other,
China-specific), each macro over its subjects; `subject/<name>/acc`. China-specific overlaps the
other four: a subject counts in its main category and, when marked, in china_specific too.
"""

from __future__ import annotations

from qwen_eval.tasks.multiple_choice import ChineseExamTask, CsvLayout

# subject -> subcategories, and category -> subcategories: haonan-li/CMMLU src/categories.py
# (the same tables as Qwen's evaluate_cmmlu.py), in the repository's subject order.
SUBJECTS: dict[str, tuple[str, ...]] = {
    "agronomy": ("other",),
    "anatomy": ("biology",),
    "ancient_chinese": ("linguistics", "china specific"),
    "arts": ("arts",),
    "astronomy": ("physics",),
    "business_ethics": ("business",),
    "chinese_civil_service_exam": ("politics", "china specific"),
    "chinese_driving_rule": ("other", "china specific"),
    "chinese_food_culture": ("culture", "china specific"),
    "chinese_foreign_policy": ("politics", "china specific"),
    "chinese_history": ("history", "china specific"),
    "chinese_literature": ("literature", "china specific"),
    "chinese_teacher_qualification": ("education", "china specific"),
    "college_actuarial_science": ("math",),
    "college_education": ("education",),
    "college_engineering_hydrology": ("engineering",),
    "college_law": ("law",),
    "college_mathematics": ("math",),
    "college_medical_statistics": ("statistics",),
    "clinical_knowledge": ("other",),
    "college_medicine": ("other",),
    "computer_science": ("computer science",),
    "computer_security": ("other",),
    "conceptual_physics": ("physics",),
    "construction_project_management": ("other", "china specific"),
    "economics": ("economics",),
    "education": ("education",),
    "elementary_chinese": ("linguistics", "china specific"),
    "elementary_commonsense": ("other", "china specific"),
    "elementary_information_and_technology": ("other",),
    "electrical_engineering": ("engineering",),
    "elementary_mathematics": ("math",),
    "ethnology": ("culture", "china specific"),
    "food_science": ("other",),
    "genetics": ("biology",),
    "global_facts": ("global",),
    "high_school_biology": ("biology",),
    "high_school_chemistry": ("chemistry",),
    "high_school_geography": ("geography",),
    "high_school_mathematics": ("math",),
    "high_school_physics": ("physics",),
    "high_school_politics": ("politics", "china specific"),
    "human_sexuality": ("other",),
    "international_law": ("law",),
    "journalism": ("sociology",),
    "jurisprudence": ("law",),
    "legal_and_moral_basis": ("other",),
    "logical": ("philosophy",),
    "machine_learning": ("computer science",),
    "management": ("business",),
    "marketing": ("business",),
    "marxist_theory": ("philosophy",),
    "modern_chinese": ("linguistics", "china specific"),
    "nutrition": ("other",),
    "philosophy": ("philosophy",),
    "professional_accounting": ("business",),
    "professional_law": ("law",),
    "professional_medicine": ("other",),
    "professional_psychology": ("psychology",),
    "public_relations": ("politics",),
    "security_study": ("politics",),
    "sociology": ("culture",),
    "sports_science": ("other",),
    "traditional_chinese_medicine": ("other", "china specific"),
    "virology": ("biology",),
    "world_history": ("history",),
    "world_religions": ("global",),
}

CATEGORIES: dict[str, tuple[str, ...]] = {
    "stem": ("physics", "chemistry", "biology", "computer science", "math", "engineering", "statistics"),
    "humanities": ("history", "philosophy", "law", "arts", "literature", "global"),
    "social_sciences": ("linguistics", "business", "politics", "culture", "economics", "geography",
                        "psychology", "education", "sociology"),
    "other": ("other",),
    "china_specific": ("china specific",),
}


def subjects_of(category: str) -> list[str]:
    return [s for s, subcategories in SUBJECTS.items() if set(subcategories) & set(CATEGORIES[category])]


class CMMLU(ChineseExamTask):
    name = "cmmlu"
    headline = "acc"
    model_card_column = "CMMLU"
    version = "1"

    subjects = SUBJECTS
    layout = CsvLayout(question="Question", answer="Answer")  # Qwen: pd.read_csv(path); column 0 is a row index
    file_pattern = "{split}/{subject}.csv"
    eval_split = "test"
    hub_id = "haonan-li/cmmlu"
    groups = {category: subjects_of(category) for category in CATEGORIES}
