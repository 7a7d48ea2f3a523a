"""Design spaces: specs whose values may be choices (docs/spaces.md).

:mod:`.ir` (Choice, Space, Budget), :mod:`.read` (a space file -> Space, every
alternative checked), :mod:`.resolve` (one assignment -> a plain ModelSpec),
:mod:`.budgets` (params, MACs, training memory on the meta device), :mod:`.sample`
(enumeration, uniform draws with rejection, statistics), :mod:`.emit` (canonical ``.mf``
of a space), :mod:`.output` (the sample folder and its manifest).
"""
