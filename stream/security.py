"""How every Kafka client of the project authenticates and encrypts: one place, from `[kafka]`.

`client_options()` gives the keyword arguments of an aiokafka client (consumer, producer,
admin); `faust_credentials()` gives the Faust app's `broker_credentials`, which Faust turns into
the same aiokafka arguments for its own consumer, producer and admin client. Both use the same
TLS context (`ssl_context()`), so the worker's Faust clients and its plain aiokafka clients,
the console, the notifier, the demo and the live simulator connect alike.

A file that cannot be used (a missing CA file, a certificate that does not match its key, an
encrypted key without its password) raises ConfigError naming the key, before any connection.
"""

from __future__ import annotations

import ssl
from typing import Any

from geoincident.stream.config import ConfigError, KafkaConfig

TLS_PROTOCOLS = ("SSL", "SASL_SSL")


def ssl_context(kafka: KafkaConfig) -> ssl.SSLContext | None:
    """The TLS context of `[kafka]`, or None when the protocol does not use TLS.

    The brokers' certificates are verified against `ssl_cafile` (else the system's CAs) and,
    unless `ssl_check_hostname = false`, must name the host connected to. With
    `ssl_certfile` the client presents its certificate (mutual TLS).
    """
    if kafka.security_protocol not in TLS_PROTOCOLS:
        return None
    for key in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        path = getattr(kafka, key)
        if path:
            try:
                open(path, "rb").close()  # noqa: SIM115 - only whether it can be read
            except OSError as exc:
                raise ConfigError(f"kafka.{key}: cannot read {path}: {exc.strerror}") from None
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=kafka.ssl_cafile)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"kafka.ssl_cafile: no CA certificate in {kafka.ssl_cafile}: {exc}"
        ) from None
    context.check_hostname = kafka.ssl_check_hostname
    if kafka.ssl_certfile:
        password = kafka.key_password()
        try:
            # A callable password: OpenSSL never prompts on the terminal for an encrypted key
            # (a service has no one to answer); without a password it gets an empty one and
            # fails, which is reported below.
            context.load_cert_chain(
                kafka.ssl_certfile, kafka.ssl_keyfile, password=lambda: password or ""
            )
        except (OSError, ssl.SSLError) as exc:
            hint = "" if password else " (an encrypted key needs kafka.ssl_key_password(_file))"
            raise ConfigError(
                f"kafka.ssl_certfile/kafka.ssl_keyfile: cannot load the client certificate "
                f"{kafka.ssl_certfile} and its key{hint}: {exc}"
            ) from None
    return context


def client_options(kafka: KafkaConfig) -> dict[str, Any]:
    """The security keyword arguments of an aiokafka client (AIOKafkaConsumer,
    AIOKafkaProducer, AIOKafkaAdminClient, AIOKafkaClient)."""
    options: dict[str, Any] = {"security_protocol": kafka.security_protocol}
    if kafka.sasl_mechanism:
        options.update(
            sasl_mechanism=kafka.sasl_mechanism,
            sasl_plain_username=kafka.sasl_username,
            sasl_plain_password=kafka.password(),
        )
    context = ssl_context(kafka)
    if context is not None:
        options["ssl_context"] = context
    return options


def faust_credentials(kafka: KafkaConfig) -> Any:
    """The Faust app's `broker_credentials` for `[kafka]` (None for PLAINTEXT).

    Faust picks the protocol from the credentials' type and whether they carry a TLS context:
    SASL credentials without one mean SASL_PLAINTEXT, so the context is always passed for
    SASL_SSL (without it the password went out in clear).
    """
    import faust

    context = ssl_context(kafka)
    if kafka.sasl_mechanism:
        return faust.SASLCredentials(
            username=kafka.sasl_username,
            password=kafka.password(),
            mechanism=kafka.sasl_mechanism,
            ssl_context=context,
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None
