"""C-Eval (Huang et al., 2023): 52 Chinese exam subjects, 5-shot, accuracy macro-averaged over
subjects on the val split (test answers are withheld), as in the Qwen-14B model card.

Data: `dev/{subject}_dev.csv` and `val/{subject}_val.csv`, CSV with a header
(id,question,A,B,C,D,answer[,explanation]); hub `ceval/ceval-exam`, one config per subject.

Prompt (Qwen's eval/evaluate_ceval.py, byte for byte; no header line):
    问题：{q}\nA. {A}\nB. {B}\nC. {C}\nD. {D}\n答案：{ans}\n\n      (each shot)
    问题：{q}\nA. {A}\nB. {B}\nC. {C}\nD. {D}\n答案：                (the query)
The continuations are "A".."D" without a space. Qwen's C-Eval script does not truncate long
prompts; here every `Choice` backend left-truncates past its max_length, which changes nothing at
2048: the longest 5-shot val prompt is 1,191 Qwen tokens.

Metric: `acc` macro over subjects; the four categories and C-Eval Hard, each macro over its
subjects; `subject/<name>/acc`.
"""

from __future__ import annotations

from qwen_eval.tasks.chat_choice import ceval_question, ceval_letter
from qwen_eval.tasks.multiple_choice import ChineseExamTask, CsvLayout, MCDoc

CATEGORIES = ("stem", "social_sciences", "humanities", "other")

# subject -> category, from the C-Eval repo's subject_mapping.json (which leaves clinical_medicine
# without a category; Qwen's evaluate_ceval.py puts it in Other, as here).
SUBJECTS: dict[str, str] = {
    "computer_network": "stem",
    "operating_system": "stem",
    "computer_architecture": "stem",
    "college_programming": "stem",
    "college_physics": "stem",
    "college_chemistry": "stem",
    "advanced_mathematics": "stem",
    "probability_and_statistics": "stem",
    "discrete_mathematics": "stem",
    "electrical_engineer": "stem",
    "metrology_engineer": "stem",
    "high_school_mathematics": "stem",
    "high_school_physics": "stem",
    "high_school_chemistry": "stem",
    "high_school_biology": "stem",
    "middle_school_mathematics": "stem",
    "middle_school_biology": "stem",
    "middle_school_physics": "stem",
    "middle_school_chemistry": "stem",
    "veterinary_medicine": "stem",
    "college_economics": "social_sciences",
    "business_administration": "social_sciences",
    "marxism": "social_sciences",
    "mao_zedong_thought": "social_sciences",
    "education_science": "social_sciences",
    "teacher_qualification": "social_sciences",
    "high_school_politics": "social_sciences",
    "high_school_geography": "social_sciences",
    "middle_school_politics": "social_sciences",
    "middle_school_geography": "social_sciences",
    "modern_chinese_history": "humanities",
    "ideological_and_moral_cultivation": "humanities",
    "logic": "humanities",
    "law": "humanities",
    "chinese_language_and_literature": "humanities",
    "art_studies": "humanities",
    "professional_tour_guide": "humanities",
    "legal_professional": "humanities",
    "high_school_chinese": "humanities",
    "high_school_history": "humanities",
    "middle_school_history": "humanities",
    "civil_servant": "other",
    "sports_science": "other",
    "plant_protection": "other",
    "basic_medicine": "other",
    "clinical_medicine": "other",
    "urban_and_rural_planner": "other",
    "accountant": "other",
    "fire_engineer": "other",
    "environmental_impact_assessment_engineer": "other",
    "tax_accountant": "other",
    "physician": "other",
}

# C-Eval Hard: the eight mathematics, physics and chemistry subjects the paper singles out.
HARD_SUBJECTS = (
    "advanced_mathematics", "discrete_mathematics", "probability_and_statistics", "college_chemistry",
    "college_physics", "high_school_mathematics", "high_school_chemistry", "high_school_physics",
)


class CEval(ChineseExamTask):
    name = "ceval"
    headline = "acc"
    model_card_column = "C-Eval"
    version = "1"

    subjects = SUBJECTS
    layout = CsvLayout(question="question", answer="answer")  # Qwen: pd.read_csv(path), header row
    file_pattern = "{split}/{subject}_{split}.csv"
    eval_split = "val"
    hub_id = "ceval/ceval-exam"
    groups = {**{category: [s for s, c in SUBJECTS.items() if c == category] for category in CATEGORIES},
              "hard": HARD_SUBJECTS}

    def chat_question(self, doc: MCDoc) -> str:
        return ceval_question(doc.question.text, doc.question.choices)

    def chat_letter(self, reply: str, doc: MCDoc) -> str:
        return ceval_letter(reply, doc.question.text, doc.question.choices)
