"""Front ends: .mf (Lark grammar) and .yaml (JSON Schema), both producing ``ir.ModelSpec``."""
