//! Host-side bindings of the WIT world in `wit/`.

wasmtime::component::bindgen!({
    path: "wit",
    world: "policy-world",
    additional_derives: [PartialEq, Eq],
});
