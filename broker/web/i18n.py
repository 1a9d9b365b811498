"""Korean and English text of the portal, and how a request's language is chosen.

Messages are looked up by id so both languages are plain data that a test can compare key
for key. Error texts are keyed `error.<reason>` and may use the error's params.
"""

from __future__ import annotations

from collections.abc import Callable

LANGUAGES = ("ko", "en")
LANGUAGE_NAMES = {"ko": "한국어", "en": "English"}

MESSAGES: dict[str, dict[str, str]] = {
    "ko": {
        "brand": "스마트워크 VDI",
        "skip_to_content": "본문 바로가기",
        "nav.label": "주 메뉴",
        "nav.desktops": "내 데스크톱",
        "nav.language": "언어 선택",
        "nav.signed_in_as": "{name} 님",
        "logout": "로그아웃",
        "login.title": "스마트워크 VDI 로그인",
        "login.intro": "디렉터리 계정으로 로그인하면 소속 부처의 업무용 데스크톱을 사용할 수 있습니다.",
        "login.username": "사용자 ID",
        "login.password": "비밀번호",
        "login.submit": "로그인",
        "totp.title": "2단계 인증",
        "totp.intro": "인증 앱에 표시된 6자리 코드를 입력하세요.",
        "totp.code": "인증 코드",
        "totp.submit": "확인",
        "enrol.title": "인증 앱 등록",
        "enrol.intro": "스마트워크센터 밖에서 로그인하려면 인증 앱(OTP)을 등록해야 합니다.",
        "enrol.start": "등록 시작",
        "enrol.qr_alt": "인증 앱으로 스캔할 QR 코드 (아래 주소와 같은 내용)",
        "enrol.uri": "인증 앱에 아래 주소를 입력하거나 붙여 넣으세요:",
        "enrol.confirm": "등록 완료",
        "enrol.done": "인증 앱이 등록되었습니다.",
        "enrol.not_here": "인증 앱은 스마트워크센터 네트워크에서만 등록할 수 있습니다.",
        "desktops.title": "내 데스크톱",
        "desktops.none": "배정된 데스크톱이 없습니다. 소속 기관의 시스템 관리자에게 문의하세요.",
        "desktops.state": "상태",
        "desktops.connect": "연결",
        "desktops.connect_label": "{pool} 연결",
        "desktops.connecting": "{pool}에 연결하는 중입니다…",
        "desktops.starting": "{pool}을(를) 켜는 중입니다. 잠시 기다려 주세요…",
        "state.none": "시작 전",
        "state.provisioning": "시작 중",
        "state.running": "실행 중",
        "state.error": "오류",
        "state.deleted": "종료됨",
        "state.lost": "연결 끊김: 호스트 또는 데스크톱 장애",
        "state.starting": "켜는 중",
        "state.stopping": "끄는 중",
        "state.stopped": "꺼짐 (연결하면 켜집니다)",
        "state.suspending": "절전 전환 중",
        "state.suspended": "절전 (연결하면 다시 시작됩니다)",
        "console.title": "{pool} 원격 데스크톱",
        "console.desktop": "데스크톱",
        "console.state": "상태",
        "console.screen": "원격 데스크톱 화면",
        "console.toolbar": "원격 데스크톱 제어",
        "console.connecting": "연결 중…",
        "console.connected": "연결됨",
        "console.disconnected": "연결 끊김",
        "console.connection_lost": "연결 끊김: 연결이 예기치 않게 종료되었습니다",
        "console.security_failure": "보안 협상에 실패했습니다",
        "console.disconnect": "연결 끊기",
        "console.reconnect": "다시 연결",
        "console.logoff": "로그오프",
        "console.logging_off": "로그오프하는 중…",
        "console.session_ended": "이 세션은 종료되었습니다.",
        "console.clipboard_blocked_to_desktop": "정책(또는 크기 제한)에 따라 클립보드 내용을 데스크톱으로 보내지 않았습니다.",
        "console.clipboard_blocked_to_client": "정책(또는 크기 제한)에 따라 데스크톱의 클립보드 내용을 이 PC로 보내지 않았습니다.",
        "console.clipboard_truncated": "정책에 따라 클립보드 내용의 일부만 전달했습니다.",
        "error.title": "오류",
        "error.back": "내 데스크톱으로 돌아가기",
        "error.invalid_credentials": "사용자 ID 또는 비밀번호가 올바르지 않습니다.",
        "error.too_many_attempts": "이 주소에서 로그인 실패가 너무 많습니다. 잠시 후 다시 시도하세요.",
        "error.totp_required": "인증 앱에 표시된 코드를 입력하세요.",
        "error.totp_enrolment_required": "스마트워크센터 밖에서 로그인하려면 2단계 인증이 필요합니다. 먼저 스마트워크센터에서 인증 앱을 등록하세요.",
        "error.invalid_totp": "인증 코드가 올바르지 않습니다. 인증 앱의 현재 코드를 입력하세요.",
        "error.login_expired": "로그인 시간이 초과되었습니다. 처음부터 다시 로그인하세요.",
        "error.directory_unavailable": "디렉터리 서버에 연결할 수 없습니다. 잠시 후 다시 시도하세요.",
        "error.certificate_login_failed": "인증서로 로그인하지 못했습니다. 유효한 행정전자서명(GPKI) 인증서를 사용하거나 비밀번호로 로그인하세요.",
        "error.certificate_status_unavailable": "인증서 상태(폐지 여부)를 확인할 수 없습니다. 잠시 후 다시 시도하세요.",
        "login.certificate": "인증서로 로그인",
        "login.certificate_intro": "브라우저에 등록된 행정전자서명(GPKI) 인증서로 비밀번호 없이 로그인합니다.",
        "login.certificate_title": "인증서 로그인",
        "error.not_authenticated": "먼저 로그인하세요.",
        "error.xsrf_failed": "보안 토큰이 유효하지 않습니다. 페이지를 새로 고친 뒤 다시 시도하세요.",
        "error.not_entitled": "{pool} 풀을 사용할 권한이 없습니다.",
        "error.unknown_pool": "{pool} 데스크톱 풀이 없습니다.",
        "error.unknown_session": "해당 세션이 없습니다.",
        "error.not_found": "페이지를 찾을 수 없습니다.",
        "error.unknown_user": "브로커가 아는 사용자 중에 {username}이(가) 없습니다.",
        "error.totp_not_enrolled": "{username} 사용자는 2단계 인증 앱을 등록하지 않았습니다.",
        "error.session_ended": "이 세션은 종료되었습니다.",
        "error.desktop_not_running": "데스크톱이 실행 중이 아닙니다.",
        "error.metrics_forbidden": "지표를 읽으려면 설정된 토큰이나 허용된 네트워크의 주소가 필요합니다.",
        "error.console_token_rate": "짧은 시간에 화면 연결을 너무 많이 요청했습니다. 1분 뒤에 다시 시도하십시오.",
        "error.desktop_starting": "데스크톱을 시작하는 중입니다. 잠시 후 다시 시도하세요.",
        "error.database_unavailable": "서비스를 일시적으로 사용할 수 없습니다. 잠시 후 다시 시도하세요.",
        "error.host_unreachable": "하이퍼바이저 호스트에 연결할 수 없습니다 ({detail}).",
        "error.hypervisor_error": "데스크톱을 시작하지 못했습니다 ({detail}).",
        "error.no_capacity": "지금은 데스크톱을 시작할 호스트가 없습니다: {detail}",
        "error.placement_conflict": "동시에 시작하는 데스크톱이 많습니다. 다시 시도하세요.",
        "error.image_unavailable": "데스크톱 이미지를 사용할 수 없습니다 ({detail}).",
        "error.rollout_in_progress": "pool: {pool} 풀에는 이미 진행 중인 롤아웃 {rollout}({version}, {state})이(가) 있습니다. 승격되거나 롤백될 때까지 기다리세요.",
        "error.already_on_version": "version: {pool} 풀은 이미 {image} 버전입니다.",
        "error.desktop_current": "desktop: {desktop} 데스크톱은 이미 풀이 사용하는 버전({image})입니다.",
        "error.internal_error": "내부 오류가 발생했습니다.",
        "error.network": "브로커에 연결할 수 없습니다.",
    },
    "en": {
        "brand": "Smart Work VDI",
        "skip_to_content": "Skip to main content",
        "nav.label": "Main menu",
        "nav.desktops": "My desktops",
        "nav.language": "Language",
        "nav.signed_in_as": "Signed in as {name}",
        "logout": "Sign out",
        "login.title": "Smart Work VDI sign in",
        "login.intro": "Sign in with your directory account to use your ministry's office desktop.",
        "login.username": "User ID",
        "login.password": "Password",
        "login.submit": "Sign in",
        "totp.title": "Second factor",
        "totp.intro": "Enter the six-digit code shown by your authenticator app.",
        "totp.code": "Authentication code",
        "totp.submit": "Verify",
        "enrol.title": "Register an authenticator app",
        "enrol.intro": "To sign in from outside a smart work center you need an authenticator app (OTP).",
        "enrol.start": "Start registration",
        "enrol.qr_alt": "QR code to scan with your authenticator app (same as the address below)",
        "enrol.uri": "Enter or paste this address into your authenticator app:",
        "enrol.confirm": "Finish registration",
        "enrol.done": "Your authenticator app is registered.",
        "enrol.not_here": "An authenticator app can only be registered from a smart work center network.",
        "desktops.title": "My desktops",
        "desktops.none": "No desktops are assigned to you. Please ask your agency's system administrator.",
        "desktops.state": "State",
        "desktops.connect": "Connect",
        "desktops.connect_label": "Connect to {pool}",
        "desktops.connecting": "Connecting to {pool}…",
        "desktops.starting": "Starting {pool}; this takes a moment…",
        "state.none": "Not started",
        "state.provisioning": "Starting",
        "state.running": "Running",
        "state.error": "Error",
        "state.deleted": "Logged off",
        "state.lost": "Lost: its host or the desktop failed",
        "state.starting": "Starting",
        "state.stopping": "Shutting down",
        "state.stopped": "Off (connecting starts it)",
        "state.suspending": "Suspending",
        "state.suspended": "Suspended (connecting resumes it)",
        "console.title": "{pool} remote desktop",
        "console.desktop": "Desktop",
        "console.state": "State",
        "console.screen": "Remote desktop screen",
        "console.toolbar": "Remote desktop controls",
        "console.connecting": "Connecting…",
        "console.connected": "Connected",
        "console.disconnected": "Disconnected",
        "console.connection_lost": "Disconnected: the connection closed unexpectedly",
        "console.security_failure": "Security negotiation failed",
        "console.disconnect": "Disconnect",
        "console.reconnect": "Reconnect",
        "console.logoff": "Log off",
        "console.logging_off": "Logging off…",
        "console.session_ended": "This session has ended.",
        "console.clipboard_blocked_to_desktop": "The clipboard was not sent to the desktop (policy or size limit).",
        "console.clipboard_blocked_to_client": "The desktop's clipboard was not sent to this computer (policy or size limit).",
        "console.clipboard_truncated": "Only part of the clipboard was transferred, as the policy requires.",
        "error.title": "Error",
        "error.back": "Back to my desktops",
        "error.invalid_credentials": "The user name or password is incorrect.",
        "error.too_many_attempts": "Too many failed sign-in attempts from this address. Please try again later.",
        "error.totp_required": "Enter the code from your authenticator app.",
        "error.totp_enrolment_required": "Sign-in from outside a smart work center needs a second factor. Enrol an authenticator app at a smart work center first.",
        "error.invalid_totp": "The code is not valid. Enter the current code from your authenticator app.",
        "error.login_expired": "The sign-in took too long. Please start again.",
        "error.directory_unavailable": "The directory is unavailable. Please try again shortly.",
        "error.certificate_login_failed": "Certificate login failed. Use a valid government (GPKI) certificate or sign in with a password.",
        "error.certificate_status_unavailable": "The certificate's revocation status could not be checked. Please try again shortly.",
        "login.certificate": "Sign in with certificate",
        "login.certificate_intro": "Sign in without a password using the government (GPKI) certificate installed in your browser.",
        "login.certificate_title": "Certificate sign in",
        "error.not_authenticated": "Please sign in first.",
        "error.xsrf_failed": "The security token is not valid. Reload the page and try again.",
        "error.not_entitled": "You are not entitled to pool {pool}.",
        "error.unknown_pool": "There is no desktop pool named {pool}.",
        "error.unknown_session": "There is no such session.",
        "error.not_found": "The page was not found.",
        "error.unknown_user": "There is no user '{username}' known to the broker.",
        "error.totp_not_enrolled": "User '{username}' has no second factor enrolled.",
        "error.session_ended": "This session has ended.",
        "error.desktop_not_running": "The desktop is not running.",
        "error.metrics_forbidden": "Metrics need the configured bearer token or a client in metrics_networks.",
        "error.console_token_rate": "Too many console openings in a short time. Please wait a minute and try again.",
        "error.desktop_starting": "Your desktop is still starting; try again in a moment.",
        "error.database_unavailable": "The service is temporarily unavailable. Please try again in a moment.",
        "error.host_unreachable": "The hypervisor host cannot be reached ({detail}).",
        "error.hypervisor_error": "The desktop could not be started ({detail}).",
        "error.no_capacity": "No host can start the desktop now: {detail}",
        "error.placement_conflict": "Too many desktops are starting at once; please try again.",
        "error.image_unavailable": "The desktop image is not available ({detail}).",
        "error.rollout_in_progress": "pool: {pool} already has rollout {rollout} to {version} ({state}); wait until it is promoted or rolled back.",
        "error.already_on_version": "version: pool {pool} is already on {image}.",
        "error.desktop_current": "desktop: {desktop} is already on the version its pool uses ({image}).",
        "error.internal_error": "An internal error occurred.",
        "error.network": "The broker cannot be reached.",
    },
}


def translate(lang: str, key: str, **params: object) -> str:
    """The message `key` in `lang`; English, then the key itself, when it is missing."""
    text = MESSAGES.get(lang, {}).get(key) or MESSAGES["en"].get(key) or key
    try:
        return text.format(**params) if params else text
    except (KeyError, IndexError):
        # A translation that names a param the caller did not give must not break the page.
        return text


def translator(lang: str) -> Callable[..., str]:
    def _(key: str, **params: object) -> str:
        return translate(lang, key, **params)

    return _


def error_message(lang: str, reason: str, fallback: str, params: dict[str, str]) -> str:
    """The error's text in `lang` when a translation can be filled from its params, else `fallback`."""
    text = MESSAGES.get(lang, {}).get(f"error.{reason}")
    if text is None:
        return fallback
    try:
        return text.format(**params)
    except (KeyError, IndexError):
        return fallback


def _accept_language_tags(header: str) -> list[str]:
    """Primary language tags of an Accept-Language header, best first (RFC 9110 §12.5.4)."""
    ranked = []
    for position, item in enumerate(header.split(",")):
        tag, _, parameters = item.strip().partition(";")
        quality = 1.0
        name, _, value = parameters.strip().partition("=")
        if name.strip() == "q":
            try:
                quality = float(value)
            except ValueError:
                quality = 0.0
        if tag and quality > 0:
            ranked.append((-quality, position, tag.split("-")[0].strip().lower()))
    return [tag for *_, tag in sorted(ranked)]


def choose_language(query: str | None, cookie: str | None, accept_language: str | None, default: str) -> str:
    """An explicit choice (query, then cookie) wins over what the browser prefers."""
    for candidate in (query, cookie):
        if candidate in LANGUAGES:
            return candidate
    for tag in _accept_language_tags(accept_language or ""):
        if tag in LANGUAGES:
            return tag
    return default


def other_language(lang: str) -> str:
    return "en" if lang == "ko" else "ko"
