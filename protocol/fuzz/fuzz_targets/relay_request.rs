//! A relay request as the sidecar receives it (inside an authenticated record, but from a
//! gateway it need not trust): decoding and validation refuse or accept, never panic, and an
//! accepted request's payload is canonical JSON whose hash matches.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::canonical;
use protocol::envelope::RelayRequest;

fuzz_target!(|data: &[u8]| {
    let Ok(request) = postcard::from_bytes::<RelayRequest>(data) else {
        return;
    };
    if request.validate().is_ok() {
        assert_eq!(
            canonical::payload_hash(&request.tool_name, &request.payload),
            request.payload_hash
        );
        let arguments = request.arguments().expect("a valid payload parses");
        assert_eq!(
            canonical::canonicalize(&arguments).ok().as_deref(),
            Some(request.payload.as_slice())
        );
    }
});
