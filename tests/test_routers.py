from resilience_crm.models import Circuit
from resilience_crm.routers import ResilienceRouter

router = ResilienceRouter()


def test_no_alias_leaves_routing_to_django(settings):
    settings.RESILIENCE_CRM = {}
    assert router.db_for_write(Circuit) is None
    assert router.allow_migrate("default", "resilience_crm") is None


def test_alias_routes_the_apps_models_only(settings):
    from django.contrib.auth.models import User

    settings.RESILIENCE_CRM = {"DATABASE_ALIAS": "resilience"}
    assert router.db_for_read(Circuit) == "resilience"
    assert router.db_for_write(Circuit) == "resilience"
    assert router.db_for_write(User) is None
    assert router.allow_migrate("resilience", "resilience_crm") is True
    assert router.allow_migrate("default", "resilience_crm") is False
    assert router.allow_migrate("default", "auth") is None
