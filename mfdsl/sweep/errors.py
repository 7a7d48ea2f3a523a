"""The sweep's refusals (a :class:`mfdsl.errors.UserError`: exit 2, one message)."""
from __future__ import annotations

from ..errors import UserError


class SweepError(UserError):
    """A candidate folder, sweep folder, storage or option the sweep cannot use."""
