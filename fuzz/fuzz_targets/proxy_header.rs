//! The PROXY protocol header reader and parser (server/src/proxy.rs), fed arbitrary bytes as
//! the start of a connection from a trusted proxy. Invariants: no panic; the reader never
//! consumes more than the header's bound (107 bytes for v1, 2048 for v2); what it accepts,
//! `parse` accepts alone with the same result; and a v1 source re-renders to a header that
//! parses to the same source.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_server::proxy::{self, MAX_V1_BYTES, MAX_V2_BYTES};

fuzz_target!(|data: &[u8]| {
    let _ = proxy::parse(data);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let mut reader = data;
    let result = runtime.block_on(proxy::read_header(
        &mut reader,
        std::time::Duration::from_secs(5),
    ));
    let consumed = data.len() - reader.len();
    assert!(consumed <= MAX_V1_BYTES.max(MAX_V2_BYTES), "{consumed}");
    if let Ok(header) = result {
        let alone = proxy::parse(&data[..consumed]).expect("the header parses alone");
        assert_eq!(alone, header);
        if header.version == 1 {
            assert!(consumed <= MAX_V1_BYTES, "{consumed}");
            if let Some(source) = header.source {
                let family = if source.is_ipv4() { "TCP4" } else { "TCP6" };
                let destination = if source.is_ipv4() {
                    "192.0.2.1"
                } else {
                    "2001:db8::1"
                };
                let text = format!(
                    "PROXY {family} {} {destination} {} 21\r\n",
                    source.ip(),
                    source.port()
                );
                assert_eq!(proxy::parse(text.as_bytes()).unwrap().source, Some(source));
            }
        }
    }
});
