//! The self-signed certificate and TLS configuration, mirroring the real
//! CPGW, which ships a self-signed certificate for `localhost`.

use std::{io, sync::Arc};

use rustls::{
    ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer},
};

/// A freshly generated certificate and the TLS server configuration using it.
pub(crate) struct SimTls {
    pub(crate) certificate_der: Vec<u8>,
    pub(crate) server_config: Arc<ServerConfig>,
}

/// Generates a new key and self-signed certificate (SANs `localhost` and
/// `127.0.0.1`) and builds a rustls server configuration around them.
///
/// The aws-lc-rs provider is passed explicitly so that the simulator works
/// whether or not (and whichever) process-wide default provider is installed.
pub(crate) fn generate() -> io::Result<SimTls> {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .map_err(io::Error::other)?;
    let certificate_der = certified.cert.der().to_vec();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        certified.signing_key.serialize_der(),
    ));

    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut server_config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_no_client_auth()
        .with_single_cert(vec![CertificateDer::from(certificate_der.clone())], key)
        .map_err(io::Error::other)?;
    // Only HTTP/1.1 is offered: that is what CPGW speaks, and the h2 codec
    // may not be compiled into hyper-util in every build of the workspace.
    server_config.alpn_protocols = vec![b"http/1.1".to_vec()];

    Ok(SimTls {
        certificate_der,
        server_config: Arc::new(server_config),
    })
}
