"""Admin user list, deactivate/activate, and the start-up / CLI admin bootstrap (issue 2 item 12)."""
from __future__ import annotations

from sqlalchemy import func, select

from models import User
from tests.auth.conftest import audit_events, is_signed_in, post_form
from tests.conftest import TEST_PASSWORD, base_config


def test_admin_users_page_lists_every_user(app, client, make_user, login):
    admin = make_user(email="admin@example.com", is_admin=True)
    make_user(email="alice@example.com")
    login(admin)
    html = client.get("/admin/users").get_data(as_text=True)
    assert "alice@example.com" in html and "admin@example.com" in html
    assert "Last sign-in" in html and "never" in html and "UTC" in html


def test_admin_pages_refuse_non_admins(client, user, login, db):
    assert client.get("/admin/users").status_code == 302  # anonymous → sign-in page
    login(user)
    assert client.get("/admin/users").status_code == 403
    assert client.post("/admin/users/1/deactivate").status_code in (400, 403)  # CSRF first, then 403
    assert audit_events(db, "authz.denied")


def test_deactivating_signs_the_user_out_on_the_next_request_and_activate_restores_sign_in(
        app, client, make_user, login, db):
    admin = make_user(email="admin@example.com", is_admin=True)
    victim = make_user(email="victim@example.com")
    victim_browser = app.test_client()
    login(victim, test_client=victim_browser)
    login(admin)
    response = post_form(client, "/admin/users", {}, action=f"/admin/users/{victim.id}/deactivate")
    assert response.status_code == 302
    assert not is_signed_in(victim_browser)
    response = post_form(victim_browser, "/auth/login", {"email": victim.email, "password": TEST_PASSWORD})
    assert response.status_code == 200  # refused with the generic message
    post_form(client, "/admin/users", {}, action=f"/admin/users/{victim.id}/activate")
    login(victim, test_client=victim_browser)
    events = [event.event_type for event in audit_events(db)]
    assert "admin.user_deactivated" in events and "admin.user_activated" in events


def test_an_admin_cannot_deactivate_themselves(client, make_user, login, db):
    admin = make_user(email="admin@example.com", is_admin=True)
    login(admin)
    response = post_form(client, "/admin/users", {}, action=f"/admin/users/{admin.id}/deactivate")
    assert response.status_code == 409
    db.session.refresh(admin)
    assert admin.is_active and is_signed_in(client)


def test_deactivating_an_unknown_user_is_404(client, make_user, login):
    login(make_user(email="admin@example.com", is_admin=True))
    assert post_form(client, "/admin/users", {}, action="/admin/users/9999/deactivate").status_code == 404


def test_superadmin_settings_create_exactly_one_admin_across_app_builds(redis_server, database_url, db):
    from main import create_app
    settings = base_config(redis_server.url, database_url, SUPERADMIN_EMAIL="Root@Example.com",
                           SUPERADMIN_PASSWORD="Root-Password-9-Strong")
    create_app(settings)
    create_app(settings)
    db.session.expire_all()
    admins = db.session.scalars(select(User).where(User.is_admin.is_(True))).all()
    assert [admin.email for admin in admins] == ["root@example.com"]
    assert db.session.scalar(select(func.count(User.id))) == 1


def test_flask_create_admin_command_creates_an_admin_who_can_sign_in(app, db, client, login):
    runner = app.test_cli_runner()
    result = runner.invoke(args=["create-admin", "--email", "ops@example.com", "--password", "Ops-Password-7-Strong"])
    assert result.exit_code == 0, result.output
    admin = db.session.scalar(select(User).where(User.email == "ops@example.com"))
    assert admin.is_admin
    login(admin, password="Ops-Password-7-Strong")
    assert client.get("/admin/users").status_code == 200


def test_flask_create_admin_refuses_a_weak_password(app, db):
    result = app.test_cli_runner().invoke(args=["create-admin", "--email", "ops@example.com", "--password", "weak"])
    assert result.exit_code != 0
    assert db.session.scalar(select(User).where(User.email == "ops@example.com")) is None
