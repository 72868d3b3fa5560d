//! `quickorder demo` prints the article's rows, produced live.

use std::process::Command;

/// The demo's output, split into its four scenarios.
fn run_demo() -> Vec<String> {
    let _slot = harness::system_slot();
    let output = Command::new(env!("CARGO_BIN_EXE_quickorder"))
        .arg("demo")
        .env_remove("RUST_LOG")
        .output()
        .expect("run quickorder demo");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "demo failed: {}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let sections: Vec<String> = stdout.split("\n== ").skip(1).map(str::to_string).collect();
    assert_eq!(sections.len(), 4, "four scenarios expected:\n{stdout}");
    sections
}

/// The barrier rows of a section, as `[database, branch_id, op, reason]`.
fn barrier_rows(section: &str) -> Vec<[String; 4]> {
    let table = section.split("barrier rows of gid").nth(1).expect("barrier table");
    table
        .lines()
        .filter(|line| line.contains("| saga "))
        .map(|line| {
            let cells: Vec<String> = line.split('|').map(|c| c.trim().to_string()).collect();
            [cells[0].clone(), cells[2].clone(), cells[3].clone(), cells[5].clone()]
        })
        .collect()
}

fn stock_line(section: &str) -> String {
    let table = section.split("stock (stock-srv's database):").nth(1).expect("stock table");
    table.lines().nth(2).expect("stock row").split_whitespace().collect::<Vec<_>>().join(" ")
}

fn row(database: &str, branch: &str, op: &str, reason: &str) -> [String; 4] {
    [database.into(), branch.into(), op.into(), reason.into()]
}

#[test]
fn demo_replays_the_articles_scenarios_with_their_rows() {
    let sections = run_demo();

    // 1. Success: 200, stock 99, the article's two barrier rows.
    let success = &sections[0];
    assert!(success.contains("-> 200 ") && success.contains("\"succeed\""), "{success}");
    assert_eq!(stock_line(success), "1 | 99");
    assert_eq!(
        barrier_rows(success),
        [row("order-srv", "01", "action", "action"), row("stock-srv", "02", "action", "action")]
    );
    assert!(success.contains("| 0         |"), "live order expected:\n{success}");

    // 2. Insufficient stock: 409, the order rolled back, stock untouched,
    //    the article's four rows.
    let failure = &sections[1];
    assert!(failure.contains("-> 409 ") && failure.contains("\"failed\""), "{failure}");
    assert!(failure.contains("| 500 | -1 "), "order marked -1 expected:\n{failure}");
    assert_eq!(stock_line(failure), "1 | 99");
    assert_eq!(
        barrier_rows(failure),
        [
            row("order-srv", "01", "action", "action"),
            row("order-srv", "01", "compensate", "compensate"),
            row("stock-srv", "02", "action", "compensate"),
            row("stock-srv", "02", "compensate", "compensate"),
        ]
    );

    // 3. Duplicate delivery: answered OK, nothing changes.
    let duplicate = &sections[2];
    assert!(duplicate.contains("op action -> OK"), "{duplicate}");
    assert_eq!(stock_line(duplicate), "1 | 99");
    assert_eq!(barrier_rows(duplicate).len(), 2);

    // 4. Compensation before action, then the late action: no deduction.
    let late = &sections[3];
    assert_eq!(late.matches("-> OK").count(), 2, "{late}");
    assert_eq!(stock_line(late), "1 | 99");
    assert_eq!(
        barrier_rows(late),
        [row("stock-srv", "02", "action", "compensate"), row("stock-srv", "02", "compensate", "compensate")]
    );
}
