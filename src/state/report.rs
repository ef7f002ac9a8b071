//! `tollgate usage`: tokens and requests from the usage log, grouped by user,
//! model or day over a period, as a table, CSV or JSON.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::params;
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{Date, OffsetDateTime};

use super::database::{from_sql, Database};
use crate::config::values::parse_duration;
use crate::config::{StateSettings, StoreKind};

/// A column the report groups rows by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GroupBy {
    User,
    Model,
    /// The UTC day the request ended.
    Day,
}

impl GroupBy {
    fn name(self) -> &'static str {
        match self {
            GroupBy::User => "user",
            GroupBy::Model => "model",
            GroupBy::Day => "day",
        }
    }

    fn sql(self) -> &'static str {
        match self {
            GroupBy::User => "user",
            GroupBy::Model => "coalesce(model, '-')",
            GroupBy::Day => "strftime('%Y-%m-%d', time_ms / 1000, 'unixepoch')",
        }
    }
}

/// Output format of the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReportFormat {
    /// Aligned columns with a total line, for people.
    Table,
    Csv,
    /// One JSON array of objects.
    Json,
}

/// A report request: the period `[since_ms, until_ms)` in milliseconds since
/// the Unix epoch, and the grouping columns in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportQuery {
    pub since_ms: i64,
    pub until_ms: i64,
    pub group_by: Vec<GroupBy>,
}

/// Sums over the usage rows of one group.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReportRow {
    /// Values of the grouping columns, in the query's order.
    pub group: Vec<String>,
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_tokens: u64,
    pub reasoning_tokens: u64,
    /// Tokens charged to budgets.
    pub total_tokens: u64,
    /// Requests charged an estimate because the provider reported no usage.
    pub estimated_requests: u64,
}

const COUNT_COLUMNS: [&str; 7] = [
    "requests",
    "input_tokens",
    "output_tokens",
    "cached_tokens",
    "reasoning_tokens",
    "total_tokens",
    "estimated_requests",
];

impl ReportRow {
    fn counts(&self) -> [u64; 7] {
        [
            self.requests,
            self.input_tokens,
            self.output_tokens,
            self.cached_tokens,
            self.reasoning_tokens,
            self.total_tokens,
            self.estimated_requests,
        ]
    }
}

/// Opens the configured state database read-only and runs the query.
pub fn run(state: &StateSettings, query: &ReportQuery) -> Result<Vec<ReportRow>, String> {
    let StoreKind::Sqlite { path } = &state.store else {
        return Err(
            "state.store is memory, which keeps no usage log; set state.store to \
                    sqlite to keep one"
                .to_string(),
        );
    };
    if query.since_ms >= query.until_ms {
        return Err("--since must be earlier than --until".to_string());
    }
    let database = Database::open_read_only(path)?;
    self::query(&database, query)
}

/// Runs the query against the usage log; groups come sorted by their
/// columns.
pub fn query(database: &Database, query: &ReportQuery) -> Result<Vec<ReportRow>, String> {
    let groups: Vec<&str> = query.group_by.iter().map(|g| g.sql()).collect();
    let select_groups = if groups.is_empty() {
        String::new()
    } else {
        format!("{}, ", groups.join(", "))
    };
    let group_clause = if groups.is_empty() {
        String::new()
    } else {
        let positions: Vec<String> = (1..=groups.len()).map(|i| i.to_string()).collect();
        format!("GROUP BY {0} ORDER BY {0}", positions.join(", "))
    };
    let sql = format!(
        "SELECT {select_groups}count(*), sum(coalesce(input_tokens, 0)), \
         sum(coalesce(output_tokens, 0)), sum(coalesce(cached_tokens, 0)), \
         sum(coalesce(reasoning_tokens, 0)), sum(total_tokens), \
         sum(usage_source = 'estimated') \
         FROM usage_log WHERE time_ms >= ?1 AND time_ms < ?2 {group_clause}"
    );

    let failed = |e: rusqlite::Error| {
        format!(
            "cannot read the usage log from {}: {e}",
            database.path().display()
        )
    };
    let mut statement = database.connection().prepare(&sql).map_err(failed)?;
    let rows = statement
        .query_map(params![query.since_ms, query.until_ms], |row| {
            let mut group = Vec::with_capacity(groups.len());
            for index in 0..groups.len() {
                group.push(row.get::<_, String>(index)?);
            }
            let count = |offset: usize| -> rusqlite::Result<u64> {
                Ok(from_sql(
                    row.get::<_, Option<i64>>(groups.len() + offset)?
                        .unwrap_or(0),
                ))
            };
            Ok(ReportRow {
                group,
                requests: count(0)?,
                input_tokens: count(1)?,
                output_tokens: count(2)?,
                cached_tokens: count(3)?,
                reasoning_tokens: count(4)?,
                total_tokens: count(5)?,
                estimated_requests: count(6)?,
            })
        })
        .map_err(failed)?;
    let rows = rows.collect::<Result<Vec<_>, _>>().map_err(failed)?;
    // Without grouping, an empty period still yields one row of zeros.
    Ok(rows.into_iter().filter(|row| row.requests > 0).collect())
}

/// Formats the rows. The table ends with a total line; CSV and JSON carry
/// the rows only.
pub fn render(rows: &[ReportRow], group_by: &[GroupBy], format: ReportFormat) -> String {
    let mut header: Vec<&str> = group_by.iter().map(|g| g.name()).collect();
    header.extend(COUNT_COLUMNS);

    match format {
        ReportFormat::Json => {
            let objects: Vec<serde_json::Value> = rows
                .iter()
                .map(|row| {
                    let mut object = serde_json::Map::new();
                    for (group, value) in group_by.iter().zip(&row.group) {
                        object.insert(group.name().to_string(), value.clone().into());
                    }
                    for (name, count) in COUNT_COLUMNS.iter().zip(row.counts()) {
                        object.insert(name.to_string(), count.into());
                    }
                    serde_json::Value::Object(object)
                })
                .collect();
            let mut text = serde_json::to_string_pretty(&objects).unwrap_or_default();
            text.push('\n');
            text
        }
        ReportFormat::Csv => {
            let mut text = header.join(",");
            text.push('\n');
            for row in rows {
                let mut fields: Vec<String> = row.group.iter().map(|v| csv_field(v)).collect();
                fields.extend(row.counts().iter().map(u64::to_string));
                text.push_str(&fields.join(","));
                text.push('\n');
            }
            text
        }
        ReportFormat::Table => table(rows, group_by.len(), &header),
    }
}

fn table(rows: &[ReportRow], group_count: usize, header: &[&str]) -> String {
    let mut total = ReportRow::default();
    for row in rows {
        total.requests += row.requests;
        total.input_tokens += row.input_tokens;
        total.output_tokens += row.output_tokens;
        total.cached_tokens += row.cached_tokens;
        total.reasoning_tokens += row.reasoning_tokens;
        total.total_tokens += row.total_tokens;
        total.estimated_requests += row.estimated_requests;
    }
    let mut total_cells = vec![String::new(); group_count];
    if let Some(first) = total_cells.first_mut() {
        *first = "total".to_string();
    }
    total_cells.extend(total.counts().iter().map(u64::to_string));

    let mut lines: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    for row in rows {
        let mut cells = row.group.clone();
        cells.extend(row.counts().iter().map(u64::to_string));
        lines.push(cells);
    }
    lines.push(total_cells);

    let widths: Vec<usize> = (0..header.len())
        .map(|column| {
            lines
                .iter()
                .map(|cells| cells[column].len())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut text = String::new();
    for cells in &lines {
        let mut line = String::new();
        for (column, cell) in cells.iter().enumerate() {
            if column > 0 {
                line.push_str("  ");
            }
            // Group columns read left-aligned, counts right-aligned.
            if column < group_count {
                let _ = write!(line, "{cell:<width$}", width = widths[column]);
            } else {
                let _ = write!(line, "{cell:>width$}", width = widths[column]);
            }
        }
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

fn csv_field(value: &str) -> String {
    if value.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_string()
    }
}

/// Parses a `--since` or `--until` value into milliseconds since the Unix
/// epoch: a duration before `now` (`24h`, `7d`), a UTC date (`2026-12-01`,
/// its midnight) or an RFC 3339 time (`2026-12-01T08:00:00Z`).
pub fn parse_time(text: &str, option: &str, now: SystemTime) -> Result<i64, String> {
    let text = text.trim();
    if let Ok(at) = OffsetDateTime::parse(text, &Rfc3339) {
        return Ok((at.unix_timestamp_nanos() / 1_000_000) as i64);
    }
    if let Ok(date) = Date::parse(text, format_description!("[year]-[month]-[day]")) {
        return Ok(date.midnight().assume_utc().unix_timestamp() * 1_000);
    }
    if let Ok(ago) = parse_duration(text) {
        let at = now.checked_sub(ago).unwrap_or(UNIX_EPOCH);
        let millis = at
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_millis();
        return Ok(millis as i64);
    }
    Err(format!(
        "{option}: invalid time \"{text}\"; use a duration before now such as 24h or 7d, a UTC \
         date such as 2026-12-01, or an RFC 3339 time such as 2026-12-01T08:00:00Z"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(group: &[&str], requests: u64, total_tokens: u64) -> ReportRow {
        ReportRow {
            group: group.iter().map(|g| g.to_string()).collect(),
            requests,
            total_tokens,
            ..ReportRow::default()
        }
    }

    #[test]
    fn times_parse_in_three_forms() {
        let now = UNIX_EPOCH + Duration::from_secs(1_796_400_000);
        assert_eq!(
            parse_time("24h", "--since", now).unwrap(),
            (1_796_400_000 - 86_400) * 1_000
        );
        assert_eq!(
            parse_time("2026-12-04", "--since", now).unwrap(),
            1_796_342_400_000
        );
        assert_eq!(
            parse_time("2026-12-04T01:00:00Z", "--until", now).unwrap(),
            1_796_346_000_000
        );
        let error = parse_time("yesterday", "--since", now).unwrap_err();
        assert!(
            error.starts_with("--since: invalid time \"yesterday\""),
            "{error}"
        );
    }

    #[test]
    fn table_aligns_and_totals() {
        let rows = [
            row(&["alice", "gpt-4o"], 2, 1_500),
            row(&["bob", "o3"], 1, 7),
        ];
        let text = render(&rows, &[GroupBy::User, GroupBy::Model], ReportFormat::Table);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[0].starts_with("user   model   requests"), "{text}");
        assert!(lines[1].starts_with("alice  gpt-4o"), "{text}");
        assert!(lines[3].starts_with("total"), "{text}");
        assert!(lines[3].contains(" 1507 "), "{text}");
    }

    #[test]
    fn csv_quotes_fields_with_commas() {
        let rows = [row(&["team, ops"], 1, 9)];
        let text = render(&rows, &[GroupBy::User], ReportFormat::Csv);
        assert_eq!(
            text,
            "user,requests,input_tokens,output_tokens,cached_tokens,reasoning_tokens,\
             total_tokens,estimated_requests\n\"team, ops\",1,0,0,0,0,9,0\n"
        );
    }

    #[test]
    fn json_names_every_column() {
        let rows = [row(&["2026-12-04"], 3, 30)];
        let text = render(&rows, &[GroupBy::Day], ReportFormat::Json);
        let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed[0]["day"], "2026-12-04");
        assert_eq!(parsed[0]["requests"], 3);
        assert_eq!(parsed[0]["total_tokens"], 30);
        assert_eq!(parsed[0]["estimated_requests"], 0);
    }
}
