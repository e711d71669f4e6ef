// Command slashguard judges issuer patterns by the rule octo-sts applies to them, on
// the tree Go's own regexp/syntax parser builds, as a reference for our Python guard
// (tests/integration/test_slash_guard_go.py).
//
// Input: one JSON string per line. Output, one line each: "invalid" when Go cannot
// compile the pattern, else two verdicts, "accept" or "refuse": the original's rule,
// then the same rule with x{1} counted as a fixed position (our one deliberate leniency).
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"regexp/syntax"
)

// slashes reports whether re can match '/' other than as a literal at a fixed position.
func slashes(re *syntax.Regexp, variable, onceFixed bool) bool {
	switch re.Op {
	case syntax.OpAnyChar, syntax.OpAnyCharNotNL:
		return true
	case syntax.OpCharClass:
		for i := 0; i+1 < len(re.Rune); i += 2 {
			if re.Rune[i] <= '/' && '/' <= re.Rune[i+1] {
				return true
			}
		}
	case syntax.OpLiteral:
		for _, r := range re.Rune {
			if r == '/' && variable {
				return true
			}
		}
	case syntax.OpStar, syntax.OpPlus, syntax.OpQuest, syntax.OpAlternate:
		variable = true
	case syntax.OpRepeat:
		if !(onceFixed && re.Min == 1 && re.Max == 1) {
			variable = true
		}
	}
	for _, sub := range re.Sub {
		if slashes(sub, variable, onceFixed) {
			return true
		}
	}
	return false
}

func verdict(refused bool) string {
	if refused {
		return "refuse"
	}
	return "accept"
}

func main() {
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 1<<20)
	out := bufio.NewWriter(os.Stdout)
	defer out.Flush()
	for in.Scan() {
		var pattern string
		if err := json.Unmarshal(in.Bytes(), &pattern); err != nil {
			fmt.Fprintln(os.Stderr, "bad input line:", err)
			os.Exit(2)
		}
		re, err := syntax.Parse(pattern, syntax.Perl)
		if _, cerr := regexp.Compile(pattern); err != nil || cerr != nil {
			fmt.Fprintln(out, "invalid")
			continue
		}
		fmt.Fprintln(out, verdict(slashes(re, false, false)), verdict(slashes(re, false, true)))
	}
	if err := in.Err(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
}
