"""What each tenant may do: its models, its highest priority and its limits."""

from __future__ import annotations

from services.common.errors import PermissionDenied
from services.router.auth import ANONYMOUS
from services.router.config import PRIORITY_NAMES, RouterConfig, TenantSpec
from services.router.ratelimit import Limits

# inference.v1.Priority values: 1 high, 2 medium, 3 low
_RANK = {name: value for value, name in enumerate(PRIORITY_NAMES, start=1)}


class TenantPolicies:
    def __init__(self, config: RouterConfig) -> None:
        self._defaults = config.default_limits
        self._tenants = {t.tenant_id: t for t in config.tenants}
        self._anonymous = TenantSpec(ANONYMOUS, "", limits=config.default_limits)

    def spec(self, tenant: str) -> TenantSpec:
        return self._tenants.get(tenant, self._anonymous)

    def is_admin(self, tenant: str) -> bool:
        """Sees the fleet view. Anonymous callers do: the router allows them only on
        loopback, that is, to whoever runs it."""
        return tenant == ANONYMOUS or self.spec(tenant).admin

    def limits(self, tenant: str) -> Limits:
        return self.spec(tenant).limits or self._defaults

    def check(self, tenant: str, model_id: str, priority: int) -> None:
        """Raises PermissionDenied if the tenant may not use the model or the priority."""
        spec = self.spec(tenant)
        if spec.models and model_id not in spec.models:
            raise PermissionDenied(f"tenant {tenant!r} may not use model {model_id!r}")
        if priority < _RANK[spec.max_priority]:
            raise PermissionDenied(
                f"tenant {tenant!r} may ask for priority {spec.max_priority} at most"
            )
