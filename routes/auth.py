"""Auth pages: register, sign in/out, change password, and the list of one's own sign-ins (issue 2 items 5-7).

Rate limits count POSTs only: sign-in 10/min per address and 5/min per account, register 5/hour per
address, password change 3/min per user. A 429 is rendered by the shared error handler.
"""
from __future__ import annotations

from urllib.parse import urlsplit

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required
from flask_wtf import FlaskForm
from wtforms import BooleanField, EmailField, PasswordField, SubmitField
from wtforms.validators import DataRequired, EqualTo, Length, StopValidation

from utils import accounts, sessions
from utils.errors import Conflict, NotFound, ValidationFailed
from utils.extensions import client_ip, db, limiter

bp = Blueprint("auth", __name__, url_prefix="/auth")


# --- forms ----------------------------------------------------------------------------------------

def _email_field() -> EmailField:
    return EmailField("Email", validators=[DataRequired(), Length(max=254)],
                      render_kw={"autocomplete": "username", "autocapitalize": "none", "spellcheck": "false"})


def _new_password_fields(label: str, name: str) -> tuple[PasswordField, PasswordField]:
    """The new password and its confirmation (which must equal the field called `name`)."""
    new = PasswordField(label, validators=[DataRequired()], render_kw={"autocomplete": "new-password"})
    confirm = PasswordField("Repeat the password", render_kw={"autocomplete": "new-password"},
                            validators=[DataRequired(), EqualTo(name, message="The passwords do not match.")])
    return new, confirm


class LoginForm(FlaskForm):
    email = _email_field()
    password = PasswordField("Password", validators=[DataRequired()], render_kw={"autocomplete": "current-password"})
    remember = BooleanField("Keep me signed in on this device")
    submit = SubmitField("Sign in")


def _check_password_rules(field, email: str) -> None:
    """Show every broken password rule next to the field at once (the service checks again)."""
    problems = accounts.password_problems(field.data or "", email or "")
    if problems:
        field.errors.extend(problems)
        raise StopValidation()


class RegisterForm(FlaskForm):
    email = _email_field()
    password, confirm = _new_password_fields("Password", "password")
    submit = SubmitField("Create account")

    def validate_password(self, field) -> None:
        _check_password_rules(field, self.email.data)


class PasswordForm(FlaskForm):
    current_password = PasswordField("Current password", validators=[DataRequired()],
                                     render_kw={"autocomplete": "current-password"})
    new_password, confirm = _new_password_fields("New password", "new_password")
    submit = SubmitField("Change password")

    def validate_new_password(self, field) -> None:
        _check_password_rules(field, current_user.email)


PASSWORD_HINT = ("At least 8 characters with upper- and lower-case letters, a digit and a special character, "
                 "or a passphrase of 16 or more characters. Common passwords are refused.")


# --- helpers for the views ------------------------------------------------------------------------

def safe_next(unsafe_next: str | None) -> str:
    """The `next` target if it is a same-site relative path, else "/" (no open redirect)."""
    if not unsafe_next or not unsafe_next.startswith("/") or unsafe_next.startswith(("//", "/\\")):
        return "/"
    parts = urlsplit(unsafe_next)
    if parts.scheme or parts.netloc or any(ord(char) < 32 for char in unsafe_next):
        return "/"
    return unsafe_next


def login_account_key() -> str:
    """Rate-limit key for sign-in per account: the normalised email typed into the form."""
    unsafe_email = request.form.get("email", "")[:254]
    try:
        return "account:" + accounts.normalise_email(unsafe_email)
    except ValidationFailed:
        return "account:" + (unsafe_email.strip().lower() or "ip:" + client_ip())


def user_key() -> str:
    """Rate-limit key for signed-in actions: the user id (the address when nobody is signed in)."""
    return f"user:{current_user.id}" if current_user.is_authenticated else "ip:" + client_ip()


def _show_field_error(form: FlaskForm, error: ValidationFailed) -> None:
    field = getattr(form, error.details.get("field", ""), None)
    problems = error.details.get("problems") or [error.message]
    if field is None:
        form.form_errors.append(error.message)
    else:
        field.errors = list(field.errors) + problems


# --- views ----------------------------------------------------------------------------------------

@bp.route("/login", methods=["GET", "POST"])
@limiter.limit("10/minute", methods=["POST"])
@limiter.limit("5/minute", methods=["POST"], key_func=login_account_key)
def login():
    if current_user.is_authenticated:
        return redirect(safe_next(request.args.get("next")))
    form = LoginForm()
    if form.validate_on_submit():
        try:
            user = accounts.authenticate(form.email.data, form.password.data)
        except accounts.InvalidCredentials as error:
            db.session.commit()  # keep the failure count and the audit event
            form.form_errors.append(error.message)
        else:
            sessions.start_session(user, remember=form.remember.data)
            db.session.commit()
            return redirect(safe_next(request.args.get("next")))
    return render_template("auth/login.html", form=form)


@bp.route("/register", methods=["GET", "POST"])
@limiter.limit("5/hour", methods=["POST"])
def register():
    if current_user.is_authenticated:
        return redirect("/")
    form = RegisterForm()
    if form.validate_on_submit():
        try:
            user = accounts.register(form.email.data, form.password.data)
        except ValidationFailed as error:
            _show_field_error(form, error)
        except Conflict as error:
            form.email.errors = [error.message]
        else:
            sessions.start_session(user)
            db.session.commit()
            flash("Welcome to Tradewarden. Your account is ready.", "success")
            return redirect("/")
    return render_template("auth/register.html", form=form, password_hint=PASSWORD_HINT)


@bp.post("/logout")
def logout():
    if current_user.is_authenticated:
        sessions.sign_out(current_user._get_current_object())
        db.session.commit()
    flash("You are signed out.", "info")
    return redirect(url_for("auth.login"))


@bp.route("/password", methods=["GET", "POST"])
@login_required
@limiter.limit("3/minute", methods=["POST"], key_func=user_key)
def change_password():
    form = PasswordForm()
    if form.validate_on_submit():
        try:
            accounts.change_password(current_user, form.current_password.data, form.new_password.data)
        except ValidationFailed as error:
            _show_field_error(form, error)
        else:
            ended = sessions.end_other_sessions(current_user)
            db.session.commit()
            flash(f"Your password is changed. Signed out of {ended} other session(s).", "success")
            return redirect(url_for("auth.list_sessions"))
    return render_template("auth/password.html", form=form, password_hint=PASSWORD_HINT)


@bp.get("/sessions")
@login_required
def list_sessions():
    rows = sessions.list_sessions(current_user)
    current_id = current_user.current_session.id if current_user.current_session is not None else None
    return render_template("auth/sessions.html", rows=rows, current_id=current_id, form=FlaskForm(),
                           describe_agent=sessions.describe_agent)


@bp.post("/sessions/<session_id>/revoke")
@login_required
def revoke_session(session_id: str):
    if current_user.current_session is not None and current_user.current_session.id == session_id:
        sessions.sign_out(current_user._get_current_object())
        db.session.commit()
        flash("You are signed out.", "info")
        return redirect(url_for("auth.login"))
    if not sessions.revoke_session(current_user, session_id):
        raise NotFound("No such session.")
    db.session.commit()
    flash("That session is signed out.", "success")
    return redirect(url_for("auth.list_sessions"))


@bp.post("/sessions/revoke-all")
@login_required
def revoke_all():
    ended = sessions.sign_out_everywhere(current_user._get_current_object())
    db.session.commit()
    flash(f"Signed out everywhere ({ended} session(s)).", "info")
    return redirect(url_for("auth.login"))
