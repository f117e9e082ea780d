from resilience_crm.models import Circuit
from resilience_crm.routers import ResilienceRouter

router = ResilienceRouter()


def test_no_alias_leaves_routing_to_django(settings):
    settings.RESILIENCE_CRM = {}
    assert router.db_for_write(Circuit) is None
    assert router.allow_migrate("default", "resilience_crm") is None


def test_alias_routes_the_apps_models_only(settings):
    from django.contrib.auth.models import User

    settings.RESILIENCE_CRM = {"DATABASE_ALIAS": "elsewhere"}
    assert router.db_for_read(Circuit) == "elsewhere"
    assert router.db_for_write(Circuit) == "elsewhere"
    assert router.db_for_write(User) is None
    assert router.allow_migrate("elsewhere", "resilience_crm") is True
    assert router.allow_migrate("default", "resilience_crm") is False
    assert router.allow_migrate("default", "auth") is None


def test_another_alias_of_the_same_database_migrates_the_apps_tables(settings):
    """tests/settings.py's ``resilience`` alias names the test database, as ``default`` does:
    ``migrate`` on either creates the tables both use (they share django_migrations)."""
    settings.RESILIENCE_CRM = {"DATABASE_ALIAS": "resilience"}
    assert router.allow_migrate("default", "resilience_crm") is True
    assert router.allow_migrate("resilience", "resilience_crm") is True
    assert router.allow_migrate("resilience", "auth") is None


def test_relations_to_users_are_allowed_only_within_one_database(settings):
    from django.contrib.auth.models import User

    settings.RESILIENCE_CRM = {"DATABASE_ALIAS": "resilience"}
    circuit, user = Circuit(), User()
    circuit._state.db, user._state.db = "resilience", "default"
    assert router.allow_relation(circuit, user) is True  # two aliases, one database
    circuit._state.db = "elsewhere"
    assert router.allow_relation(circuit, user) is None  # Django's rule: refused
