//! Templates with limits: any text either fails to compile or renders within the fuel,
//! nesting and output limits (an error naming the limit otherwise), never panicking and never
//! producing more than the output limit.
#![no_main]

use herald_core::model::{EmailContent, TemplateContent, TitleBody};
use herald_core::template::{Compiled, MAX_FIELD_OUTPUT};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let content = TemplateContent {
        push: Some(TitleBody {
            title: "t".into(),
            body: text.into(),
        }),
        email: Some(EmailContent {
            subject: "s".into(),
            text: "x".into(),
            html: Some(text.into()),
        }),
        ..Default::default()
    };
    let Ok(compiled) = Compiled::new(content) else {
        return;
    };
    let _ = compiled.check_limits();
    let ctx = minijinja::Value::from_serialize(serde_json::json!({
        "user": {"id": "u1", "n": 7, "name": "<b>x</b>"},
        "data": {"list": [1, 2, 3], "s": "abc"},
    }));
    for field in ["push.body", "email.html"] {
        if let Ok(out) = compiled.render(field, text, &ctx) {
            assert!(out.len() <= MAX_FIELD_OUTPUT);
        }
    }
});
