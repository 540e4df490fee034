package accounts

import (
	"strconv"

	"github.com/keyrelay/keyrelay/tenants"
)

// commonPINs are the most used four-digit PINs (DataGenetics' analysis of
// 3.4 million PINs), on top of the patterns CheckPIN refuses by rule.
var commonPINs = func() map[string]bool {
	m := map[string]bool{}
	for _, p := range []string{
		"1234", "1111", "0000", "1212", "7777", "1004", "2000", "4444", "2222", "6969",
		"9999", "3333", "5555", "6666", "1122", "1313", "8888", "4321", "2001", "1010",
		"2580", "0852", "1379", "1397", "9731", "7931", "1590", "0159", "7410", "0147",
		"1478", "8741", "3698", "9630", "1357", "2468", "1235", "1230", "0123", "5683",
		"0007", "0070", "0700", "7000", "6789", "9876", "1998", "1999", "2020", "5150",
		"1342", "1324", "2112", "1221", "4545", "5151", "1001", "1969", "1984", "1987",
		"0911", "9110", "6699", "1123", "1233", "0101", "0202", "1231", "1290", "1369",
		"1029", "3210", "4567", "5678", "7890", "0987", "2323", "2424", "3434", "3636",
		"5252", "5353", "5656", "5757", "6161", "6363", "7272", "7373", "8181", "8282",
		"9191", "9292", "1818", "1717", "1616", "1515", "1414", "2121", "1100", "2211",
	} {
		m[p] = true
	}
	return m
}()

// CheckPIN refuses PINs that are not four digits or that an attacker would
// try first: the list above, one digit repeated, ascending or descending
// runs, pairs (ABAB, AABB, ABBA) and years 1900–2099.
func CheckPIN(pin string) error {
	bad := func(msg string) error { return tenants.Invalid(tenants.FieldError{Field: "pin", Message: msg}) }
	if len(pin) != 4 {
		return bad("must be exactly 4 digits")
	}
	d := make([]int, 4)
	for i := 0; i < 4; i++ {
		if pin[i] < '0' || pin[i] > '9' {
			return bad("must be exactly 4 digits")
		}
		d[i] = int(pin[i] - '0')
	}
	if commonPINs[pin] {
		return bad("is one of the most common PINs; choose another")
	}
	asc, desc := true, true
	for i := 1; i < 4; i++ {
		asc = asc && d[i] == (d[i-1]+1)%10
		desc = desc && d[i] == (d[i-1]+9)%10
	}
	switch {
	case d[0] == d[1] && d[1] == d[2] && d[2] == d[3]:
		return bad("must not repeat one digit")
	case asc || desc:
		return bad("must not be a run of digits")
	case d[0] == d[2] && d[1] == d[3], d[0] == d[1] && d[2] == d[3], d[0] == d[3] && d[1] == d[2]:
		return bad("must not be a pattern of pairs")
	}
	if y, _ := strconv.Atoi(pin); y >= 1900 && y <= 2099 {
		return bad("must not be a year")
	}
	return nil
}
