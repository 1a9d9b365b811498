"""Settings of the directory (LDAP) authenticator."""

from pydantic import BaseModel, ConfigDict, Field, SecretStr


class LdapSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field("ldap://127.0.0.1:3389", description="ldap:// or ldaps:// URL of the directory")
    user_base: str = Field(description="DN under which user entries are searched")
    user_attr: str = Field("uid", description="attribute holding the login name")
    user_object_class: str = Field("inetOrgPerson", description="object class of user entries")
    display_name_attr: str = Field("displayName", description="attribute shown as the user's name")
    group_base: str = Field(description="DN under which group entries are searched")
    group_object_class: str = Field("groupOfNames", description="object class of group entries")
    group_member_attr: str = Field("member", description="group attribute listing member DNs")
    group_name_attr: str = Field(
        "cn", description="group attribute used as the group name in pool entitlements"
    )
    bind_dn: str | None = Field(None, description="service account used to find users; anonymous if unset")
    bind_password: SecretStr | None = Field(None, description="password of bind_dn")
    timeout_s: float = Field(
        5.0, gt=0, le=60, description="connect and response timeout of directory requests"
    )
