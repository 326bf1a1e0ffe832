// Value parsers shared by the policies (included with `include!`, since a guest
// crate of helpers would need its own WIT bindings). The formats are those of
// wasmtime's cache configuration: "1h", "30m", "512Mi", "70%".

/// Parses a duration such as "1h", "30m", "15s", "500ms" or "1d" into milliseconds.
fn parse_duration_ms(value: &str) -> Option<u64> {
    let value = value.trim();
    let split = value.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = value.split_at(split);
    let number: u64 = number.parse().ok()?;
    let unit_ms = match unit.trim() {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    number.checked_mul(unit_ms)
}

/// Parses a size such as "512Mi", "1Gi", "64K" or "1000" into bytes.
fn parse_size(value: &str) -> Option<u64> {
    let value = value.trim();
    let split = value.find(|c: char| !c.is_ascii_digit()).unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let number: u64 = number.parse().ok()?;
    let multiplier: u64 = match unit.trim() {
        "" => 1,
        "K" => 1_000,
        "Ki" => 1 << 10,
        "M" => 1_000_000,
        "Mi" => 1 << 20,
        "G" => 1_000_000_000,
        "Gi" => 1 << 30,
        "T" => 1_000_000_000_000,
        "Ti" => 1 << 40,
        _ => return None,
    };
    number.checked_mul(multiplier)
}

/// Parses a percentage "70%" (0 to 100).
fn parse_percent(value: &str) -> Option<u8> {
    let number: u8 = value.trim().strip_suffix('%')?.trim().parse().ok()?;
    (number <= 100).then_some(number)
}
