//! The code points llama.cpp's Unicode tables (`unicode-data.cpp`, generated from an
//! older Unicode version than the regex engine's) treat as unassigned. Pre-tokenizer
//! regexes subtract them from every `\p{..}` class, so code points assigned in newer
//! Unicode versions split exactly as in llama.cpp. Data generated from llama.cpp's
//! `unicode_ranges_flags` (the ranges flagged UNDEFINED), adjacent ranges merged.

/// A regex class body (without brackets) of llama.cpp's unassigned code points.
pub(crate) const LLAMA_UNASSIGNED: &str = concat!(
    r"\x{378}-\x{379}\x{380}-\x{383}\x{38B}\x{38D}\x{3A2}\x{530}\x{557}-\x{558}\x{58B}-\x{58C}",
    r"\x{590}\x{5C8}-\x{5CF}\x{5EB}-\x{5EE}\x{5F5}-\x{5FF}\x{70E}\x{74B}-\x{74C}\x{7B2}-\x{7BF}",
    r"\x{7FB}-\x{7FC}\x{82E}-\x{82F}\x{83F}\x{85C}-\x{85D}\x{85F}\x{86B}-\x{86F}\x{88F}",
    r"\x{892}-\x{897}\x{984}\x{98D}-\x{98E}\x{991}-\x{992}\x{9A9}\x{9B1}\x{9B3}-\x{9B5}",
    r"\x{9BA}-\x{9BB}\x{9C5}-\x{9C6}\x{9C9}-\x{9CA}\x{9CF}-\x{9D6}\x{9D8}-\x{9DB}\x{9DE}",
    r"\x{9E4}-\x{9E5}\x{9FF}-\x{A00}\x{A04}\x{A0B}-\x{A0E}\x{A11}-\x{A12}\x{A29}\x{A31}\x{A34}",
    r"\x{A37}\x{A3A}-\x{A3B}\x{A3D}\x{A43}-\x{A46}\x{A49}-\x{A4A}\x{A4E}-\x{A50}\x{A52}-\x{A58}",
    r"\x{A5D}\x{A5F}-\x{A65}\x{A77}-\x{A80}\x{A84}\x{A8E}\x{A92}\x{AA9}\x{AB1}\x{AB4}",
    r"\x{ABA}-\x{ABB}\x{AC6}\x{ACA}\x{ACE}-\x{ACF}\x{AD1}-\x{ADF}\x{AE4}-\x{AE5}\x{AF2}-\x{AF8}",
    r"\x{B00}\x{B04}\x{B0D}-\x{B0E}\x{B11}-\x{B12}\x{B29}\x{B31}\x{B34}\x{B3A}-\x{B3B}",
    r"\x{B45}-\x{B46}\x{B49}-\x{B4A}\x{B4E}-\x{B54}\x{B58}-\x{B5B}\x{B5E}\x{B64}-\x{B65}",
    r"\x{B78}-\x{B81}\x{B84}\x{B8B}-\x{B8D}\x{B91}\x{B96}-\x{B98}\x{B9B}\x{B9D}\x{BA0}-\x{BA2}",
    r"\x{BA5}-\x{BA7}\x{BAB}-\x{BAD}\x{BBA}-\x{BBD}\x{BC3}-\x{BC5}\x{BC9}\x{BCE}-\x{BCF}",
    r"\x{BD1}-\x{BD6}\x{BD8}-\x{BE5}\x{BFB}-\x{BFF}\x{C0D}\x{C11}\x{C29}\x{C3A}-\x{C3B}\x{C45}",
    r"\x{C49}\x{C4E}-\x{C54}\x{C57}\x{C5B}-\x{C5C}\x{C5E}-\x{C5F}\x{C64}-\x{C65}\x{C70}-\x{C76}",
    r"\x{C8D}\x{C91}\x{CA9}\x{CB4}\x{CBA}-\x{CBB}\x{CC5}\x{CC9}\x{CCE}-\x{CD4}\x{CD7}-\x{CDC}",
    r"\x{CDF}\x{CE4}-\x{CE5}\x{CF0}\x{CF4}-\x{CFF}\x{D0D}\x{D11}\x{D45}\x{D49}\x{D50}-\x{D53}",
    r"\x{D64}-\x{D65}\x{D80}\x{D84}\x{D97}-\x{D99}\x{DB2}\x{DBC}\x{DBE}-\x{DBF}\x{DC7}-\x{DC9}",
    r"\x{DCB}-\x{DCE}\x{DD5}\x{DD7}\x{DE0}-\x{DE5}\x{DF0}-\x{DF1}\x{DF5}-\x{E00}\x{E3B}-\x{E3E}",
    r"\x{E5C}-\x{E80}\x{E83}\x{E85}\x{E8B}\x{EA4}\x{EA6}\x{EBE}-\x{EBF}\x{EC5}\x{EC7}\x{ECF}",
    r"\x{EDA}-\x{EDB}\x{EE0}-\x{EFF}\x{F48}\x{F6D}-\x{F70}\x{F98}\x{FBD}\x{FCD}\x{FDB}-\x{FFF}",
    r"\x{10C6}\x{10C8}-\x{10CC}\x{10CE}-\x{10CF}\x{1249}\x{124E}-\x{124F}\x{1257}\x{1259}",
    r"\x{125E}-\x{125F}\x{1289}\x{128E}-\x{128F}\x{12B1}\x{12B6}-\x{12B7}\x{12BF}\x{12C1}",
    r"\x{12C6}-\x{12C7}\x{12D7}\x{1311}\x{1316}-\x{1317}\x{135B}-\x{135C}\x{137D}-\x{137F}",
    r"\x{139A}-\x{139F}\x{13F6}-\x{13F7}\x{13FE}-\x{13FF}\x{169D}-\x{169F}\x{16F9}-\x{16FF}",
    r"\x{1716}-\x{171E}\x{1737}-\x{173F}\x{1754}-\x{175F}\x{176D}\x{1771}\x{1774}-\x{177F}",
    r"\x{17DE}-\x{17DF}\x{17EA}-\x{17EF}\x{17FA}-\x{17FF}\x{181A}-\x{181F}\x{1879}-\x{187F}",
    r"\x{18AB}-\x{18AF}\x{18F6}-\x{18FF}\x{191F}\x{192C}-\x{192F}\x{193C}-\x{193F}",
    r"\x{1941}-\x{1943}\x{196E}-\x{196F}\x{1975}-\x{197F}\x{19AC}-\x{19AF}\x{19CA}-\x{19CF}",
    r"\x{19DB}-\x{19DD}\x{1A1C}-\x{1A1D}\x{1A5F}\x{1A7D}-\x{1A7E}\x{1A8A}-\x{1A8F}",
    r"\x{1A9A}-\x{1A9F}\x{1AAE}-\x{1AAF}\x{1ACF}-\x{1AFF}\x{1B4D}-\x{1B4F}\x{1B7F}",
    r"\x{1BF4}-\x{1BFB}\x{1C38}-\x{1C3A}\x{1C4A}-\x{1C4C}\x{1C89}-\x{1C8F}\x{1CBB}-\x{1CBC}",
    r"\x{1CC8}-\x{1CCF}\x{1CFB}-\x{1CFF}\x{1F16}-\x{1F17}\x{1F1E}-\x{1F1F}\x{1F46}-\x{1F47}",
    r"\x{1F4E}-\x{1F4F}\x{1F58}\x{1F5A}\x{1F5C}\x{1F5E}\x{1F7E}-\x{1F7F}\x{1FB5}\x{1FC5}",
    r"\x{1FD4}-\x{1FD5}\x{1FDC}\x{1FF0}-\x{1FF1}\x{1FF5}\x{1FFF}\x{2065}\x{2072}-\x{2073}\x{208F}",
    r"\x{209D}-\x{209F}\x{20C1}-\x{20CF}\x{20F1}-\x{20FF}\x{218C}-\x{218F}\x{2427}-\x{243F}",
    r"\x{244B}-\x{245F}\x{2B74}-\x{2B75}\x{2B96}\x{2CF4}-\x{2CF8}\x{2D26}\x{2D28}-\x{2D2C}",
    r"\x{2D2E}-\x{2D2F}\x{2D68}-\x{2D6E}\x{2D71}-\x{2D7E}\x{2D97}-\x{2D9F}\x{2DA7}\x{2DAF}\x{2DB7}",
    r"\x{2DBF}\x{2DC7}\x{2DCF}\x{2DD7}\x{2DDF}\x{2E5E}-\x{2E7F}\x{2E9A}\x{2EF4}-\x{2EFF}",
    r"\x{2FD6}-\x{2FEF}\x{3040}\x{3097}-\x{3098}\x{3100}-\x{3104}\x{3130}\x{318F}\x{31E4}-\x{31EE}",
    r"\x{321F}\x{A48D}-\x{A48F}\x{A4C7}-\x{A4CF}\x{A62C}-\x{A63F}\x{A6F8}-\x{A6FF}",
    r"\x{A7CB}-\x{A7CF}\x{A7D2}\x{A7D4}\x{A7DA}-\x{A7F1}\x{A82D}-\x{A82F}\x{A83A}-\x{A83F}",
    r"\x{A878}-\x{A87F}\x{A8C6}-\x{A8CD}\x{A8DA}-\x{A8DF}\x{A954}-\x{A95E}\x{A97D}-\x{A97F}",
    r"\x{A9CE}\x{A9DA}-\x{A9DD}\x{A9FF}\x{AA37}-\x{AA3F}\x{AA4E}-\x{AA4F}\x{AA5A}-\x{AA5B}",
    r"\x{AAC3}-\x{AADA}\x{AAF7}-\x{AB00}\x{AB07}-\x{AB08}\x{AB0F}-\x{AB10}\x{AB17}-\x{AB1F}",
    r"\x{AB27}\x{AB2F}\x{AB6C}-\x{AB6F}\x{ABEE}-\x{ABEF}\x{ABFA}-\x{ABFF}\x{D7A4}-\x{D7AF}",
    r"\x{D7C7}-\x{D7CA}\x{D7FC}-\x{D7FF}\x{FA6E}-\x{FA6F}\x{FADA}-\x{FAFF}\x{FB07}-\x{FB12}",
    r"\x{FB18}-\x{FB1C}\x{FB37}\x{FB3D}\x{FB3F}\x{FB42}\x{FB45}\x{FBC3}-\x{FBD2}\x{FD90}-\x{FD91}",
    r"\x{FDC8}-\x{FDCE}\x{FDD0}-\x{FDEF}\x{FE1A}-\x{FE1F}\x{FE53}\x{FE67}\x{FE6C}-\x{FE6F}\x{FE75}",
    r"\x{FEFD}-\x{FEFE}\x{FF00}\x{FFBF}-\x{FFC1}\x{FFC8}-\x{FFC9}\x{FFD0}-\x{FFD1}",
    r"\x{FFD8}-\x{FFD9}\x{FFDD}-\x{FFDF}\x{FFE7}\x{FFEF}-\x{FFF8}\x{FFFE}-\x{FFFF}\x{1000C}",
    r"\x{10027}\x{1003B}\x{1003E}\x{1004E}-\x{1004F}\x{1005E}-\x{1007F}\x{100FB}-\x{100FF}",
    r"\x{10103}-\x{10106}\x{10134}-\x{10136}\x{1018F}\x{1019D}-\x{1019F}\x{101A1}-\x{101CF}",
    r"\x{101FE}-\x{1027F}\x{1029D}-\x{1029F}\x{102D1}-\x{102DF}\x{102FC}-\x{102FF}",
    r"\x{10324}-\x{1032C}\x{1034B}-\x{1034F}\x{1037B}-\x{1037F}\x{1039E}\x{103C4}-\x{103C7}",
    r"\x{103D6}-\x{103FF}\x{1049E}-\x{1049F}\x{104AA}-\x{104AF}\x{104D4}-\x{104D7}",
    r"\x{104FC}-\x{104FF}\x{10528}-\x{1052F}\x{10564}-\x{1056E}\x{1057B}\x{1058B}\x{10593}",
    r"\x{10596}\x{105A2}\x{105B2}\x{105BA}\x{105BD}-\x{105FF}\x{10737}-\x{1073F}",
    r"\x{10756}-\x{1075F}\x{10768}-\x{1077F}\x{10786}\x{107B1}\x{107BB}-\x{107FF}",
    r"\x{10806}-\x{10807}\x{10809}\x{10836}\x{10839}-\x{1083B}\x{1083D}-\x{1083E}\x{10856}",
    r"\x{1089F}-\x{108A6}\x{108B0}-\x{108DF}\x{108F3}\x{108F6}-\x{108FA}\x{1091C}-\x{1091E}",
    r"\x{1093A}-\x{1093E}\x{10940}-\x{1097F}\x{109B8}-\x{109BB}\x{109D0}-\x{109D1}\x{10A04}",
    r"\x{10A07}-\x{10A0B}\x{10A14}\x{10A18}\x{10A36}-\x{10A37}\x{10A3B}-\x{10A3E}",
    r"\x{10A49}-\x{10A4F}\x{10A59}-\x{10A5F}\x{10AA0}-\x{10ABF}\x{10AE7}-\x{10AEA}",
    r"\x{10AF7}-\x{10AFF}\x{10B36}-\x{10B38}\x{10B56}-\x{10B57}\x{10B73}-\x{10B77}",
    r"\x{10B92}-\x{10B98}\x{10B9D}-\x{10BA8}\x{10BB0}-\x{10BFF}\x{10C49}-\x{10C7F}",
    r"\x{10CB3}-\x{10CBF}\x{10CF3}-\x{10CF9}\x{10D28}-\x{10D2F}\x{10D3A}-\x{10E5F}\x{10E7F}",
    r"\x{10EAA}\x{10EAE}-\x{10EAF}\x{10EB2}-\x{10EFC}\x{10F28}-\x{10F2F}\x{10F5A}-\x{10F6F}",
    r"\x{10F8A}-\x{10FAF}\x{10FCC}-\x{10FDF}\x{10FF7}-\x{10FFF}\x{1104E}-\x{11051}",
    r"\x{11076}-\x{1107E}\x{110C3}-\x{110CC}\x{110CE}-\x{110CF}\x{110E9}-\x{110EF}",
    r"\x{110FA}-\x{110FF}\x{11135}\x{11148}-\x{1114F}\x{11177}-\x{1117F}\x{111E0}",
    r"\x{111F5}-\x{111FF}\x{11212}\x{11242}-\x{1127F}\x{11287}\x{11289}\x{1128E}\x{1129E}",
    r"\x{112AA}-\x{112AF}\x{112EB}-\x{112EF}\x{112FA}-\x{112FF}\x{11304}\x{1130D}-\x{1130E}",
    r"\x{11311}-\x{11312}\x{11329}\x{11331}\x{11334}\x{1133A}\x{11345}-\x{11346}",
    r"\x{11349}-\x{1134A}\x{1134E}-\x{1134F}\x{11351}-\x{11356}\x{11358}-\x{1135C}",
    r"\x{11364}-\x{11365}\x{1136D}-\x{1136F}\x{11375}-\x{113FF}\x{1145C}\x{11462}-\x{1147F}",
    r"\x{114C8}-\x{114CF}\x{114DA}-\x{1157F}\x{115B6}-\x{115B7}\x{115DE}-\x{115FF}",
    r"\x{11645}-\x{1164F}\x{1165A}-\x{1165F}\x{1166D}-\x{1167F}\x{116BA}-\x{116BF}",
    r"\x{116CA}-\x{116FF}\x{1171B}-\x{1171C}\x{1172C}-\x{1172F}\x{11747}-\x{117FF}",
    r"\x{1183C}-\x{1189F}\x{118F3}-\x{118FE}\x{11907}-\x{11908}\x{1190A}-\x{1190B}\x{11914}",
    r"\x{11917}\x{11936}\x{11939}-\x{1193A}\x{11947}-\x{1194F}\x{1195A}-\x{1199F}",
    r"\x{119A8}-\x{119A9}\x{119D8}-\x{119D9}\x{119E5}-\x{119FF}\x{11A48}-\x{11A4F}",
    r"\x{11AA3}-\x{11AAF}\x{11AF9}-\x{11AFF}\x{11B0A}-\x{11BFF}\x{11C09}\x{11C37}",
    r"\x{11C46}-\x{11C4F}\x{11C6D}-\x{11C6F}\x{11C90}-\x{11C91}\x{11CA8}\x{11CB7}-\x{11CFF}",
    r"\x{11D07}\x{11D0A}\x{11D37}-\x{11D39}\x{11D3B}\x{11D3E}\x{11D48}-\x{11D4F}",
    r"\x{11D5A}-\x{11D5F}\x{11D66}\x{11D69}\x{11D8F}\x{11D92}\x{11D99}-\x{11D9F}",
    r"\x{11DAA}-\x{11EDF}\x{11EF9}-\x{11EFF}\x{11F11}\x{11F3B}-\x{11F3D}\x{11F5A}-\x{11FAF}",
    r"\x{11FB1}-\x{11FBF}\x{11FF2}-\x{11FFE}\x{1239A}-\x{123FF}\x{1246F}\x{12475}-\x{1247F}",
    r"\x{12544}-\x{12F8F}\x{12FF3}-\x{12FFF}\x{13456}-\x{143FF}\x{14647}-\x{167FF}",
    r"\x{16A39}-\x{16A3F}\x{16A5F}\x{16A6A}-\x{16A6D}\x{16ABF}\x{16ACA}-\x{16ACF}",
    r"\x{16AEE}-\x{16AEF}\x{16AF6}-\x{16AFF}\x{16B46}-\x{16B4F}\x{16B5A}\x{16B62}",
    r"\x{16B78}-\x{16B7C}\x{16B90}-\x{16E3F}\x{16E9B}-\x{16EFF}\x{16F4B}-\x{16F4E}",
    r"\x{16F88}-\x{16F8E}\x{16FA0}-\x{16FDF}\x{16FE5}-\x{16FEF}\x{16FF2}-\x{16FFF}",
    r"\x{187F8}-\x{187FF}\x{18CD6}-\x{18CFF}\x{18D09}-\x{1AFEF}\x{1AFF4}\x{1AFFC}\x{1AFFF}",
    r"\x{1B123}-\x{1B131}\x{1B133}-\x{1B14F}\x{1B153}-\x{1B154}\x{1B156}-\x{1B163}",
    r"\x{1B168}-\x{1B16F}\x{1B2FC}-\x{1BBFF}\x{1BC6B}-\x{1BC6F}\x{1BC7D}-\x{1BC7F}",
    r"\x{1BC89}-\x{1BC8F}\x{1BC9A}-\x{1BC9B}\x{1BCA4}-\x{1CEFF}\x{1CF2E}-\x{1CF2F}",
    r"\x{1CF47}-\x{1CF4F}\x{1CFC4}-\x{1CFFF}\x{1D0F6}-\x{1D0FF}\x{1D127}-\x{1D128}",
    r"\x{1D1EB}-\x{1D1FF}\x{1D246}-\x{1D2BF}\x{1D2D4}-\x{1D2DF}\x{1D2F4}-\x{1D2FF}",
    r"\x{1D357}-\x{1D35F}\x{1D379}-\x{1D3FF}\x{1D455}\x{1D49D}\x{1D4A0}-\x{1D4A1}",
    r"\x{1D4A3}-\x{1D4A4}\x{1D4A7}-\x{1D4A8}\x{1D4AD}\x{1D4BA}\x{1D4BC}\x{1D4C4}\x{1D506}",
    r"\x{1D50B}-\x{1D50C}\x{1D515}\x{1D51D}\x{1D53A}\x{1D53F}\x{1D545}\x{1D547}-\x{1D549}\x{1D551}",
    r"\x{1D6A6}-\x{1D6A7}\x{1D7CC}-\x{1D7CD}\x{1DA8C}-\x{1DA9A}\x{1DAA0}\x{1DAB0}-\x{1DEFF}",
    r"\x{1DF1F}-\x{1DF24}\x{1DF2B}-\x{1DFFF}\x{1E007}\x{1E019}-\x{1E01A}\x{1E022}\x{1E025}",
    r"\x{1E02B}-\x{1E02F}\x{1E06E}-\x{1E08E}\x{1E090}-\x{1E0FF}\x{1E12D}-\x{1E12F}",
    r"\x{1E13E}-\x{1E13F}\x{1E14A}-\x{1E14D}\x{1E150}-\x{1E28F}\x{1E2AF}-\x{1E2BF}",
    r"\x{1E2FA}-\x{1E2FE}\x{1E300}-\x{1E4CF}\x{1E4FA}-\x{1E7DF}\x{1E7E7}\x{1E7EC}\x{1E7EF}",
    r"\x{1E7FF}\x{1E8C5}-\x{1E8C6}\x{1E8D7}-\x{1E8FF}\x{1E94C}-\x{1E94F}\x{1E95A}-\x{1E95D}",
    r"\x{1E960}-\x{1EC70}\x{1ECB5}-\x{1ED00}\x{1ED3E}-\x{1EDFF}\x{1EE04}\x{1EE20}\x{1EE23}",
    r"\x{1EE25}-\x{1EE26}\x{1EE28}\x{1EE33}\x{1EE38}\x{1EE3A}\x{1EE3C}-\x{1EE41}",
    r"\x{1EE43}-\x{1EE46}\x{1EE48}\x{1EE4A}\x{1EE4C}\x{1EE50}\x{1EE53}\x{1EE55}-\x{1EE56}\x{1EE58}",
    r"\x{1EE5A}\x{1EE5C}\x{1EE5E}\x{1EE60}\x{1EE63}\x{1EE65}-\x{1EE66}\x{1EE6B}\x{1EE73}\x{1EE78}",
    r"\x{1EE7D}\x{1EE7F}\x{1EE8A}\x{1EE9C}-\x{1EEA0}\x{1EEA4}\x{1EEAA}\x{1EEBC}-\x{1EEEF}",
    r"\x{1EEF2}-\x{1EFFF}\x{1F02C}-\x{1F02F}\x{1F094}-\x{1F09F}\x{1F0AF}-\x{1F0B0}\x{1F0C0}",
    r"\x{1F0D0}\x{1F0F6}-\x{1F0FF}\x{1F1AE}-\x{1F1E5}\x{1F203}-\x{1F20F}\x{1F23C}-\x{1F23F}",
    r"\x{1F249}-\x{1F24F}\x{1F252}-\x{1F25F}\x{1F266}-\x{1F2FF}\x{1F6D8}-\x{1F6DB}",
    r"\x{1F6ED}-\x{1F6EF}\x{1F6FD}-\x{1F6FF}\x{1F777}-\x{1F77A}\x{1F7DA}-\x{1F7DF}",
    r"\x{1F7EC}-\x{1F7EF}\x{1F7F1}-\x{1F7FF}\x{1F80C}-\x{1F80F}\x{1F848}-\x{1F84F}",
    r"\x{1F85A}-\x{1F85F}\x{1F888}-\x{1F88F}\x{1F8AE}-\x{1F8AF}\x{1F8B2}-\x{1F8FF}",
    r"\x{1FA54}-\x{1FA5F}\x{1FA6E}-\x{1FA6F}\x{1FA7D}-\x{1FA7F}\x{1FA89}-\x{1FA8F}\x{1FABE}",
    r"\x{1FAC6}-\x{1FACD}\x{1FADC}-\x{1FADF}\x{1FAE9}-\x{1FAEF}\x{1FAF9}-\x{1FAFF}\x{1FB93}",
    r"\x{1FBCB}-\x{1FBEF}\x{1FBFA}-\x{1FFFF}\x{2A6E0}-\x{2A6FF}\x{2B73A}-\x{2B73F}",
    r"\x{2B81E}-\x{2B81F}\x{2CEA2}-\x{2CEAF}\x{2EBE1}-\x{2EBEF}\x{2EE5E}-\x{2F7FF}",
    r"\x{2FA1E}-\x{2FFFF}\x{3134B}-\x{3134F}\x{323B0}-\x{E0000}\x{E0002}-\x{E001F}",
    r"\x{E0080}-\x{E00FF}\x{E01F0}-\x{EFFFF}\x{FFFFE}-\x{FFFFF}\x{10FFFE}-\x{10FFFF}",
);

/// `pattern` with each `\p{X}` replaced by `[\p{X}--[LLAMA_UNASSIGNED]]`. Letter
/// subcategories (`\p{Lu}`, `\p{Ll}`, `\p{Lt}`, `\p{Lm}`, `\p{Lo}`) become `\p{L}`:
/// llama.cpp's tables only know "letter", so it matches them all as letters.
pub(crate) fn with_llama_categories(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len());
    let mut rest = pattern;
    while let Some(pos) = rest.find(r"\p{") {
        let Some(end) = rest[pos..].find('}') else {
            break;
        };
        let class = match &rest[pos..pos + end + 1] {
            r"\p{Lu}" | r"\p{Ll}" | r"\p{Lt}" | r"\p{Lm}" | r"\p{Lo}" => r"\p{L}",
            other => other,
        };
        out.push_str(&rest[..pos]);
        out.push('[');
        out.push_str(class);
        out.push_str("--[");
        out.push_str(LLAMA_UNASSIGNED);
        out.push_str("]]");
        rest = &rest[pos + end + 1..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_every_category() {
        let p = with_llama_categories(r"[^\s\p{L}\p{N}]+|\p{Lu}x");
        assert_eq!(p.matches("--[").count(), 3);
        assert!(p.starts_with(r"[^\s[\p{L}--[\x{378}-\x{379}"));
        assert!(p.contains(r"|[\p{L}--["), "\\p{{Lu}} is a letter: {p}");
        assert!(p.ends_with("]]x"));
        assert_eq!(with_llama_categories("abc"), "abc");
    }
}
